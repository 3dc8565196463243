"""Hidden tests of ``flows/maf.py``: ``MaskedLinear``, ``MADE`` and ``MAF``.

MADE's outputs for variable ``order[k]`` may depend only on ``x[order[:k]]``, and for generic
weights they do depend on all of them; MAF evaluates the density in one MADE pass,
``z = (x - shift) * exp(-log_scale)`` with ``(shift, log_scale) = made(x)``, and samples in
``features`` passes. Parameters are re-drawn at random before every check (a fresh MADE outputs
zeros, which hides leaks and signs). The networks live in the worker; their Jacobians are finite
differences measured here.

An invertible layer is not necessarily a MAF layer: the identity or a fixed shift passes the
bijection checks. So every MAF-layer test first checks that the layer is autoregressive at all
(:func:`expect_autoregressive`).
"""

from __future__ import annotations

import pytest
import torch
from conftest import expect_gradients, expect_pair, expect_tensor, fetch, jacobians, max_error

# A change smaller than this is "no change": far above float64 finite-difference noise (~1e-9)
# and far below what random weights (std 0.3) produce (~1e-2 and more).
MOVED = 1e-6

# (features, hidden_features, num_hidden, seed of the order; None: the default order). Hidden
# widths below `features` included: a MADE must stay autoregressive however narrow it is.
MADES = [(5, 16, 2, None), (6, 4, 2, 1), (7, 5, 1, 2), (4, 32, 3, 3), (3, 2, 1, 4)]
# Wide enough that every allowed connection has a path (whatever degrees the hidden units get).
WIDE_MADES = [(5, 64, 2, None), (4, 48, 2, 3), (6, 64, 1, 1)]


def made_id(config) -> str:
    features, hidden, num_hidden, seed = config
    order = "default order" if seed is None else f"order seed {seed}"
    return f"d{features}-h{hidden}x{num_hidden}-{order}"


def random_order(features: int, seed: int | None) -> torch.Tensor | None:
    if seed is None:
        return None
    return torch.randperm(features, generator=torch.Generator().manual_seed(seed))


def build_made(maf, randomize, config, dtype, device):
    """``(made, order)``: a randomized MADE and the order it was given (or the default)."""
    features, hidden, num_hidden, seed = config
    order = random_order(features, seed)
    net = maf.MADE(features, hidden_features=hidden, num_hidden=num_hidden, order=order)
    net = randomize(net.to(device=device, dtype=dtype))
    return net, torch.arange(features) if order is None else order


@pytest.fixture(params=MADES, ids=made_id)
def made(request, maf, randomize, dtype, device):
    return build_made(maf, randomize, request.param, dtype, device)


@pytest.fixture(params=WIDE_MADES, ids=made_id)
def wide_made(request, maf, randomize, dtype, device):
    return build_made(maf, randomize, request.param, dtype, device)


def allowed_inputs(order: torch.Tensor) -> torch.Tensor:
    """``allowed[i, j]``: the outputs of variable ``i`` may depend on input ``j``."""
    features = len(order)
    allowed = torch.zeros(features, features, dtype=torch.bool)
    for k in range(features):
        allowed[order[k], order[:k]] = True
    return allowed


def made_outputs(net, features: int):
    """``v -> cat(shift, log_scale)`` of a MADE, checked, for :func:`jacobians`."""

    def outputs(v: torch.Tensor) -> torch.Tensor:
        out = net(v)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"MADE({features} features) should return a pair (shift, log_scale)"
        )
        shape = tuple(v.shape)
        shift = expect_tensor(out[0], f"the shift of MADE({features} features)", shape)
        log_scale = expect_tensor(out[1], f"the log_scale of MADE({features} features)", shape)
        return torch.cat([shift, log_scale], dim=1)

    return outputs


def made_jacobians(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Finite-difference Jacobians of MADE's shift and log-scale at each sample of ``x``."""
    features = x.shape[1]
    J = jacobians(made_outputs(net, features), x)  # (batch, 2 * features, features)
    return {"shift": J[:, :features], "log_scale": J[:, features:]}


@pytest.mark.weight(3)
def test_made_is_autoregressive(made, dtype, device, jacobian_tol):
    """MADE's outputs for order[k] depend only on x[order[:k]]"""
    net, order = made
    features = len(order)
    allowed = allowed_inputs(order)
    x = torch.randn(3, features, dtype=dtype, device=device)
    seen = torch.zeros(features, features, dtype=torch.bool)
    for what, J in made_jacobians(net, x).items():
        nonzero = (J.abs() > jacobian_tol).any(dim=0)
        seen |= nonzero
        leaks = (nonzero & ~allowed).nonzero().tolist()
        assert not leaks, (
            f"MADE({features} features, order={order.tolist()}): the {what} of variable "
            f"{leaks[0][0]} depends on x[{leaks[0][1]}], which does not come before it in the "
            f"order ({len(leaks)} forbidden connection(s) in all)"
        )
    assert seen.any(), (
        f"MADE({features} features, order={order.tolist()}) with random weights should depend on "
        "its inputs somewhere, but every output is constant"
    )


@pytest.mark.weight(2)
def test_made_uses_every_allowed_input(wide_made, dtype, device, jacobian_tol):
    """With random weights, MADE's outputs for order[k] depend on each of x[order[:k]]"""
    net, order = wide_made
    features = len(order)
    allowed = allowed_inputs(order)
    x = torch.randn(4, features, dtype=dtype, device=device)
    for what, J in made_jacobians(net, x).items():
        used = (J.abs() > jacobian_tol).any(dim=0)
        missing = (allowed & ~used).nonzero().tolist()
        assert not missing, (
            f"MADE({features} features, order={order.tolist()}) with random weights: the {what} "
            f"of variable {missing[0][0]} should depend on x[{missing[0][1]}], which comes before "
            f"it in the order, but does not change with it ({len(missing)} of "
            f"{int(allowed.sum())} allowed connection(s) missing)"
        )


def test_made_output_shapes(maf, dtype):
    """MADE returns (shift, log_scale), each (batch, features)"""
    net = maf.MADE(5, hidden_features=8).to(dtype)
    out = net(torch.randn(3, 5, dtype=dtype))
    shapes = (
        [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out]
        if isinstance(out, tuple)
        else type(out).__name__
    )
    assert shapes == [(3, 5), (3, 5)], (
        f"MADE(5)(x) on 3 samples should return (shift, log_scale) of shape (3, 5) each, "
        f"got {shapes}"
    )


def test_masked_linear_uses_mask(maf, randomize, dtype, tol):
    """MaskedLinear computes x @ (W * mask).T + b"""
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=dtype)
    layer = randomize(maf.MaskedLinear(3, 2, mask).to(dtype))
    weight = expect_tensor(fetch(layer.weight), "MaskedLinear(3, 2, mask).weight", (2, 3))
    bias = expect_tensor(fetch(layer.bias), "MaskedLinear(3, 2, mask).bias", (2,))
    x = torch.randn(4, 3, dtype=dtype)
    expected = x.double() @ (weight.double() * mask.double()).T + bias.double()
    got = expect_tensor(layer(x), "MaskedLinear(3, 2, mask)(x) on 4 samples", (4, 2))
    assert max_error(got, expected) < tol, (
        "MaskedLinear(3, 2, mask=[[1, 0, 1], [0, 0, 1]]) should compute x @ (W * mask).T + b, "
        f"using only the connections where mask = 1; expected {expected[0].tolist()}, "
        f"got {got[0].tolist()}"
    )


# (features, hidden_features, seed of the order)
MAFS = [(2, 8, None), (4, 16, 5), (5, 4, 6)]


@pytest.fixture(params=MAFS, ids=lambda c: f"d{c[0]}-h{c[1]}-order{c[2]}")
def layer(request, maf, randomize, dtype, device):
    """``(layer, name, order)``: a randomized MAF layer and its order."""
    features, hidden, seed = request.param
    order = random_order(features, seed)
    flow = maf.MAF(features, hidden_features=hidden, num_hidden=2, order=order)
    flow = randomize(flow.to(device=device, dtype=dtype))
    described = "default order" if order is None else f"order={order.tolist()}"
    order = torch.arange(features) if order is None else order
    return flow, f"MAF({features} features, {described})", order


@pytest.fixture
def points(layer, dtype, device):
    return torch.randn(4, len(layer[2]), dtype=dtype, device=device)


def expect_autoregressive(flow, name: str, order: torch.Tensor, x: torch.Tensor) -> None:
    """The layer transforms the later variables by amounts that depend on the first one.

    Changing only ``x[order[0]]`` must change ``z`` of the variables after it: the identity, a
    constant, a fixed shift or scale fail here, so the checks after this one say something
    about the student's layer.
    """
    n, d = x.shape
    moved = x.clone()
    moved[:, order[0]] += 1.0
    z, _ = expect_pair(flow.inverse(torch.cat([x, moved])), f"{name}.inverse", 2 * n, d)
    later = order[1:]
    change = max_error(z[:n, later], z[n:, later])
    assert change > MOVED, (
        f"{name}.inverse with random parameters should shift and scale each variable by "
        f"amounts computed from the variables before it in the order; changing only the first "
        f"one, x[{int(order[0])}], changed the others by {change:.3g}, so the layer is not "
        "autoregressive and this check cannot credit it"
    )


@pytest.mark.weight(2)
def test_invertible(layer, points, check):
    """A MAF layer's inverse undoes its forward, and the other way round"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points)
    check.invertible(flow, points, name)


@pytest.mark.weight(2)
def test_log_det_matches_jacobian(layer, points, check):
    """log|det J| of a MAF layer equals that of its Jacobian, per sample"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points)
    check.log_det_matches_jacobian(flow, points, name)


def test_log_dets_negate(layer, points, check):
    """A MAF layer's forward and inverse log-determinants are opposite"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points)
    check.log_dets_negate(flow, points, name)


def test_batch_independent(layer, points, check):
    """A MAF layer transforms each sample on its own"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points)
    check.batch_independent(flow, points, name)


@pytest.mark.weight(2)
def test_density_is_one_made_pass(layer, points, tol):
    """MAF.inverse(x) is z = (x - shift) * exp(-log_scale), log-det -sum(log_scale), with
    (shift, log_scale) = made(x)"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points)
    n, d = points.shape
    out = flow.made(points)
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{name}.made(x) should return a pair (shift, log_scale)"
    )
    shift = expect_tensor(out[0], f"the shift of {name}.made", (n, d)).double()
    log_scale = expect_tensor(out[1], f"the log_scale of {name}.made", (n, d)).double()
    z, log_det = expect_pair(flow.inverse(points), f"{name}.inverse", n, d)
    expected = (points.double() - shift) * torch.exp(-log_scale)
    error = max_error(z, expected)
    assert error < tol, (
        f"{name}.inverse(x) should be (x - shift) * exp(-log_scale) with (shift, log_scale) "
        f"= made(x); the largest difference is {error:.3g} (sample 0: expected "
        f"{expected[0].tolist()}, got {z[0].tolist()})"
    )
    expected_log_det = -log_scale.sum(-1)
    error = max_error(log_det, expected_log_det)
    assert error < tol, (
        f"{name}.inverse should return log|det J_f^-1(x)| = -sum(log_scale); expected "
        f"{expected_log_det.tolist()}, got {log_det.tolist()}"
    )


@pytest.mark.weight(2)
def test_made_passes(layer, points, probes):
    """MAF's density takes one MADE pass and its sampling `features` passes"""
    flow, name, order = layer
    features = len(order)
    expect_autoregressive(flow, name, order, points)
    out, density = probes.made_passes(flow, "inverse", points)
    assert density >= 0, f"{name} should compute its shifts and log-scales with a MADE; it has none"
    expect_pair(out, f"{name}.inverse", *points.shape)
    out, sampling = probes.made_passes(flow, "forward", points)
    expect_pair(out, f"{name}.forward", *points.shape)
    assert density == 1, (
        f"{name}.inverse (density) knows all of x, so one MADE pass gives every shift and "
        f"log-scale; it made {density} passes"
    )
    assert sampling == features, (
        f"{name}.forward (sampling) must produce the {features} variables one after the other, "
        f"one MADE pass each ({features} passes); it made {sampling}"
    )


def test_log_det_is_linear_time(maf, randomize, check):
    """MAF's density with 2048 features is fast and computes no determinant"""
    features = 2048
    flow = randomize(maf.MAF(features, hidden_features=16, num_hidden=1))
    x = torch.randn(16, features)
    name = f"MAF with {features} features"
    expect_autoregressive(flow, name, torch.arange(features), x)
    check.cheap(flow, x, name, ("inverse",))
    small = randomize(maf.MAF(16, hidden_features=16, num_hidden=1))
    x = torch.randn(16, 16)
    expect_autoregressive(small, "MAF with 16 features", torch.arange(16), x)
    check.cheap(small, x, "MAF with 16 features", ("forward",))


@pytest.mark.weight(2)
def test_gradients_flow(maf, randomize, probes):
    """Training needs gradients: autograd's gradients of a MAF layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    order = random_order(3, 7)
    flow = randomize(maf.MAF(3, hidden_features=8, num_hidden=2, order=order).double())
    x = torch.randn(6, 3, dtype=torch.float64)
    expect_autoregressive(flow, f"MAF(3 features, order={order.tolist()})", order, x)
    for direction in ("forward", "inverse"):
        what = f"MAF(3 features, order={order.tolist()}).{direction}"
        for output, of in ((0, "the output"), (1, "log|det J|")):
            method = getattr(flow, direction)
            expect_gradients(probes, method, flow, (x,), what, of, output)


@pytest.mark.parametrize(
    ("features", "num_hidden"), [(1, 2), (4, 0)], ids=["one variable", "no hidden layer"]
)
def test_smallest_sizes(maf, randomize, check, jacobian_tol, features, num_hidden):
    """MAF works for a single variable (its shift and log-scale are learned constants) and with
    no hidden layer (MADE is one masked linear map): autoregressive, invertible, right log-det"""
    order = random_order(features, 5)
    flow = maf.MAF(features, hidden_features=6, num_hidden=num_hidden, order=order)
    flow = randomize(flow.double())
    name = f"MAF({features} feature(s), hidden_features=6, num_hidden={num_hidden})"
    x = torch.randn(4, features, dtype=torch.float64)
    allowed = allowed_inputs(order)
    for what, J in made_jacobians(flow.made, x).items():
        used = (J.abs() > jacobian_tol).any(dim=0)
        wrong = (used != allowed).nonzero().tolist()
        assert not wrong, (
            f"{name}.made with random weights: the {what} of variable {wrong[0][0]} should "
            f"{'' if allowed[wrong[0][0], wrong[0][1]] else 'not '}depend on x[{wrong[0][1]}] "
            f"(order {order.tolist()}); it does{'' if used[wrong[0][0], wrong[0][1]] else ' not'}"
        )
    shift, log_scale = made_outputs(flow.made, features)(x).split(features, dim=1)
    moves = float(shift[:, order[0]].abs().max() + log_scale[:, order[0]].abs().max())
    assert moves > MOVED, (
        f"{name}: the first variable in the order depends on nothing, so its shift and "
        "log-scale are learned constants; with random parameters they should not be 0, "
        f"got {float(shift[0, order[0]]):.3g} and {float(log_scale[0, order[0]]):.3g}"
    )
    z, log_det = expect_pair(flow.inverse(x), f"{name}.inverse", *x.shape)
    expected = (x - shift) * torch.exp(-log_scale)
    assert max_error(z, expected) < 1e-8 and max_error(log_det, -log_scale.sum(-1)) < 1e-8, (
        f"{name}.inverse(x) should be (x - shift) * exp(-log_scale) with log-det "
        f"-sum(log_scale), (shift, log_scale) = made(x); sample 0: expected "
        f"{expected[0].tolist()} and {float(-log_scale[0].sum()):.6f}, got {z[0].tolist()} and "
        f"{float(log_det[0]):.6f}"
    )
    check.invertible(flow, x, name)
    check.log_det_matches_jacobian(flow, x, name)
