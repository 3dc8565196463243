"""Hidden tests of ``flows/maf.py``: ``MaskedLinear``, ``MADE`` and ``MAF``.

MADE's outputs for variable ``order[k]`` may depend only on ``x[order[:k]]``; MAF evaluates the
density in one MADE pass, ``z = (x - shift) * exp(-log_scale)`` with ``(shift, log_scale) =
made(x)``, and samples in ``features`` passes. Parameters are re-drawn at random before every
check (a fresh MADE outputs zeros, which hides leaks and signs). The networks live in the
worker; their Jacobians are finite differences measured here.

Every structure check sees the whole pattern, so that no test credits a constant, NaN, dense or
degenerate network: first the outputs must be finite everywhere (a NaN is not "no
dependency"), then no output may depend on a forbidden input, and the dependencies that every
valid MADE has must be there, in the same test:

- any MADE: the outputs of the *last* variable in the order depend on the *first* one. Every
  hidden unit of a MADE has a degree in ``0..d-2`` (the MADE paper's rule, for cyclic, blocked
  and random degrees alike, each layer starting at or below the previous layer's smallest
  degree), so it sees input ``order[0]`` and feeds output ``order[d-1]``: the path exists at
  every width. Whether it is *live* depends on the weights (ReLUs), so it is required in
  aggregate, over up to :data:`DRAWS` draws of random weights.
- a wide MADE (:data:`WIDE_MADES`, hidden layers of at least ``8 (d - 1)`` units): every allowed
  connection. Cyclic or blocked degrees cover ``0..d-2`` once a layer has ``d - 1`` units;
  random degrees miss one of them with probability below ``(d-1) (1 - 1/(d-1))^h``, under
  ``1e-5`` at these sizes. Narrower layers may legitimately drop connections.
- a MAF layer's density map ``x -> z``: ``z_{order[k]}`` depends only on ``x[order[:k+1]]``, on
  its own ``x`` (the diagonal, ``exp(-log_scale)``) and, in the last variable, on the first.

How many times a MAF calls its MADE is the worker's word (counted in the worker, by the class's
``forward``): it carries one point per layer, and is credited only with the values that make
it true (the density equals the formula with the MADE's outputs; sampling inverts the density).
"""

from __future__ import annotations

import pytest
import torch
from conftest import expect_gradients, expect_pair, expect_tensor, fetch, jacobians, max_error

# A change smaller than this is "no change": far above float64 finite-difference noise (~1e-9)
# and far below what random weights (std 0.3) produce (~1e-2 and more).
MOVED = 1e-6
# Weight draws over which a MADE must show its guaranteed dependencies (the seeds of each).
DRAWS = (1234, 1235, 1236, 1237)

# (features, hidden_features, num_hidden, seed of the order; None: the default order). Hidden
# widths below `features` included: a MADE must stay autoregressive however narrow it is.
MADES = [
    (5, 16, 2, None),
    (6, 4, 2, 1),
    (7, 5, 1, 2),
    (4, 32, 3, 3),
    (3, 2, 1, 4),
    (2, 1, 2, None),
    (8, 3, 2, 5),
]
# Wide: hidden layers of at least 8 (features - 1) units (see the module's docstring).
WIDE_MADES = [(5, 64, 2, None), (4, 48, 2, 3), (6, 64, 1, 1), (3, 40, 3, 6), (7, 64, 2, 7)]


def changed(dtype: torch.dtype) -> float:
    """A derivative above this is a dependency: float64 differences are good to ~1e-9, float32
    ones (step 1e-2) to ~1e-4; random weights give ~1e-2 and more."""
    return MOVED if dtype == torch.float64 else 1e-2


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
    net = randomize(net.to(device=device, dtype=dtype), DRAWS[0])
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


def first_to_last(order: torch.Tensor) -> torch.Tensor:
    """The one dependency every MADE has: variable ``order[-1]`` on input ``order[0]``."""
    required = torch.zeros(len(order), len(order), dtype=torch.bool)
    if len(order) > 1:
        required[order[-1], order[0]] = True
    return required


def made_outputs(net, features: int, name: str = ""):
    """``v -> cat(shift, log_scale)`` of a MADE, checked (shapes, finite), for :func:`jacobians`."""
    name = name or f"MADE({features} features)"

    def outputs(v: torch.Tensor) -> torch.Tensor:
        out = net(v)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"{name} should return a pair (shift, log_scale)"
        )
        shape = tuple(v.shape)
        both = []
        for what, value in zip(("shift", "log_scale"), out, strict=True):
            value = expect_tensor(value, f"the {what} of {name}", shape)
            bad = int((~torch.isfinite(value)).sum())
            assert not bad, (
                f"{name} with random weights should output finite numbers; its {what} has "
                f"{bad} NaN or infinite entries on {shape[0]} finite inputs"
            )
            both.append(value)
        return torch.cat(both, dim=1)

    return outputs


def made_jacobians(net, x: torch.Tensor, name: str = "") -> dict[str, torch.Tensor]:
    """Finite-difference Jacobians of MADE's shift and log-scale at each sample of ``x``."""
    features = x.shape[1]
    J = jacobians(made_outputs(net, features, name), x)  # (batch, 2 * features, features)
    return {"shift": J[:, :features], "log_scale": J[:, features:]}


def expect_made_structure(
    net, order: torch.Tensor, required: torch.Tensor, randomize, dtype, device, name: str = ""
) -> None:
    """Finite outputs, no forbidden dependency (at every draw) and every ``required`` one (in
    the shift and in the log-scale, over the draws of :data:`DRAWS`, until all have shown)."""
    features = len(order)
    name = name or f"MADE({features} features, order={order.tolist()})"
    allowed = allowed_inputs(order)
    generator = torch.Generator().manual_seed(features)
    used = {"shift": torch.zeros_like(allowed), "log_scale": torch.zeros_like(allowed)}
    for seed in DRAWS:
        randomize(net, seed)
        x = torch.randn(4, features, dtype=torch.float64, generator=generator)
        for what, J in made_jacobians(net, x.to(dtype=dtype, device=device), name).items():
            nonzero = (J.abs() > changed(dtype)).any(dim=0)
            leaks = (nonzero & ~allowed).nonzero().tolist()
            assert not leaks, (
                f"{name}: the {what} of variable {leaks[0][0]} depends on x[{leaks[0][1]}], "
                f"which does not come before it in the order ({len(leaks)} forbidden "
                "connection(s) in all)"
            )
            used[what] |= nonzero
        if all(bool((required <= u).all()) for u in used.values()):
            break
    randomize(net, DRAWS[0])
    for what, seen in used.items():
        missing = (required & ~seen).nonzero().tolist()
        assert not missing, (
            f"{name} with random weights ({len(DRAWS)} draws): the {what} of variable "
            f"{missing[0][0]} should depend on x[{missing[0][1]}], which comes before it in the "
            f"order, but never changes with it ({len(missing)} of {int(required.sum())} "
            "required connection(s) missing; a constant or disconnected network is not a MADE)"
        )


@pytest.mark.weight(3)
def test_made_is_autoregressive(made, randomize, dtype, device):
    """MADE's outputs for order[k] depend only on x[order[:k]], and the last variable's on the
    first (finite outputs, at any width)"""
    net, order = made
    expect_made_structure(net, order, first_to_last(order), randomize, dtype, device)


@pytest.mark.weight(2)
def test_made_uses_every_allowed_input(wide_made, randomize, dtype, device):
    """A wide MADE with random weights: the outputs for order[k] depend on each of x[order[:k]]
    and on nothing else (finite outputs)"""
    net, order = wide_made
    expect_made_structure(net, order, allowed_inputs(order), randomize, dtype, device)


@pytest.mark.parametrize("features", [1, 5])
def test_made_output_shapes(maf, randomize, dtype, features):
    """MADE returns (shift, log_scale), each (batch, features), for a batch of one too"""
    net = randomize(maf.MADE(features, hidden_features=8).to(dtype))
    for batch in (3, 1):
        x = torch.randn(batch, features, dtype=dtype)
        out = net(x)
        shapes = (
            [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out]
            if isinstance(out, tuple)
            else type(out).__name__
        )
        expected = [(batch, features), (batch, features)]
        assert shapes == expected, (
            f"MADE({features})(x) on {batch} sample(s) should return (shift, log_scale) of shape "
            f"{expected[0]} each, got {shapes}"
        )
    order = torch.arange(features)
    expect_made_structure(net, order, first_to_last(order), randomize, dtype, torch.device("cpu"))


MASKS = {
    "2x3": torch.tensor([[1, 0, 1], [0, 0, 1]]),
    "5x7 random": (torch.rand(5, 7, generator=torch.Generator().manual_seed(3)) < 0.5).long(),
}


@pytest.mark.parametrize("key", list(MASKS))
def test_masked_linear_uses_mask(maf, randomize, dtype, tol, key):
    """MaskedLinear computes x @ (W * mask).T + b"""
    mask = MASKS[key].to(dtype)
    out_features, in_features = mask.shape
    name = f"MaskedLinear({in_features}, {out_features}, mask={mask.long().tolist()})"
    layer = randomize(maf.MaskedLinear(in_features, out_features, mask).to(dtype))
    weight = expect_tensor(fetch(layer.weight), f"{name}.weight", tuple(mask.shape))
    bias = expect_tensor(fetch(layer.bias), f"{name}.bias", (out_features,))
    x = torch.randn(4, in_features, dtype=dtype)
    expected = x.double() @ (weight.double() * mask.double()).T + bias.double()
    got = expect_tensor(layer(x), f"{name}(x) on 4 samples", (4, out_features))
    error = max_error(got, expected)
    assert error < tol, (  # a NaN fails here too (NaN < tol is false)
        f"{name} should compute x @ (W * mask).T + b, using only the connections where mask = 1; "
        f"expected {expected[0].tolist()}, got {got[0].tolist()}"
    )


# (features, hidden_features, seed of the order): sizes 2, 3, 4, 5, 7, odd random orders, hidden
# layers narrower than the features.
MAFS = [(2, 8, None), (3, 2, 5), (4, 16, 5), (5, 4, 6), (7, 16, 8)]


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


def expect_finite(value: torch.Tensor, what: str) -> torch.Tensor:
    bad = int((~torch.isfinite(value)).sum())
    assert not bad, f"{what} should be finite; it has {bad} NaN or infinite entries"
    return value


def expect_autoregressive(flow, name: str, order: torch.Tensor, x: torch.Tensor, randomize) -> None:
    """The density map ``x -> z`` has the MAF pattern, with finite outputs.

    ``z_{order[k]}`` depends only on ``x[order[:k+1]]``, on its own ``x`` (``exp(-log_scale)``
    on the diagonal) and, for the last variable, on the first (over the draws of :data:`DRAWS`,
    like :func:`expect_made_structure`; the layer is left at the first). The identity, a
    constant, a fixed shift or scale, a dense or a NaN layer fail here, so the checks after
    this one say something about the student's layer.
    """
    d = x.shape[1]
    allowed = allowed_inputs(order) | torch.eye(d, dtype=torch.bool)
    required = first_to_last(order) | torch.eye(d, dtype=torch.bool)
    used = torch.zeros_like(allowed)

    def density(v: torch.Tensor) -> torch.Tensor:
        z, log_det = expect_pair(flow.inverse(v), f"{name}.inverse", *v.shape)
        expect_finite(log_det, f"{name}.inverse's log|det J| on finite inputs")
        return expect_finite(z, f"{name}.inverse(x) on finite inputs")

    generator = torch.Generator().manual_seed(d)
    for draw, seed in enumerate(DRAWS):
        if draw:
            randomize(flow, seed)
            x = torch.randn(x.shape, dtype=torch.float64, generator=generator).to(x)
        density(x)
        now = (jacobians(density, x).abs() > changed(x.dtype)).any(dim=0)
        leaks = (now & ~allowed).nonzero().tolist()
        assert not leaks, (
            f"{name}.inverse: z[{leaks[0][0]}] depends on x[{leaks[0][1]}], which comes after "
            f"it in the order; a MAF layer's shift and scale of each variable see only the "
            f"variables before it ({len(leaks)} forbidden connection(s))"
        )
        used |= now
        if bool((required <= used).all()):
            break
    if draw:
        randomize(flow, DRAWS[0])
    missing = (required & ~used).nonzero().tolist()
    assert not missing, (
        f"{name}.inverse with random parameters should shift and scale each variable by amounts "
        f"computed from the variables before it in the order; z[{missing[0][0]}] does not change "
        f"with x[{missing[0][1]}], so the layer is not autoregressive and this check cannot "
        "credit it"
    )


def expect_moves_later(flow, name: str, order: torch.Tensor, x: torch.Tensor) -> None:
    """A cheap :func:`expect_autoregressive` for wide layers: finite, and moving ``x[order[0]]``
    alone changes the later variables' ``z``."""
    n, d = x.shape
    moved = x.clone()
    moved[:, order[0]] += 1.0
    z, log_det = expect_pair(flow.inverse(torch.cat([x, moved])), f"{name}.inverse", 2 * n, d)
    expect_finite(z, f"{name}.inverse(x) on finite inputs")
    expect_finite(log_det, f"{name}.inverse's log|det J| on finite inputs")
    change = max_error(z[:n, order[1:]], z[n:, order[1:]])
    assert change > MOVED, (
        f"{name}.inverse with random parameters: changing only the first variable in the order, "
        f"x[{int(order[0])}], changed the others by {change:.3g}, so the layer is not "
        "autoregressive and this check cannot credit it"
    )


@pytest.mark.weight(2)
def test_invertible(layer, points, check, randomize):
    """A MAF layer's inverse undoes its forward, and the other way round"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points, randomize)
    check.invertible(flow, points, name)


@pytest.mark.weight(2)
def test_log_det_matches_jacobian(layer, points, check, randomize):
    """log|det J| of a MAF layer equals that of its Jacobian, per sample"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points, randomize)
    check.log_det_matches_jacobian(flow, points, name)


def test_log_dets_negate(layer, points, check, randomize):
    """A MAF layer's forward and inverse log-determinants are opposite"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points, randomize)
    check.log_dets_negate(flow, points, name)


def test_batch_independent(layer, points, check, randomize):
    """A MAF layer transforms each sample on its own"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points, randomize)
    check.batch_independent(flow, points, name)


def made_values(made, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, log_scale)`` of ``made`` at ``x``, checked, in float64."""
    out = made(x)
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{name}.made(x) should return a pair (shift, log_scale)"
    )
    shift = expect_tensor(out[0], f"the shift of {name}.made", tuple(x.shape))
    log_scale = expect_tensor(out[1], f"the log_scale of {name}.made", tuple(x.shape))
    return shift.double(), log_scale.double()


def expect_density_formula(flow, made, name: str, x: torch.Tensor, tol: float) -> None:
    """``flow.inverse(x)`` is ``((x - shift) * exp(-log_scale), -sum(log_scale))`` with
    ``(shift, log_scale) = made(x)``, ``made`` evaluated apart from the layer's own call."""
    n, d = x.shape
    shift, log_scale = made_values(made, x, name)
    z, log_det = expect_pair(flow.inverse(x), f"{name}.inverse", n, d)
    expected = (x.double() - shift) * torch.exp(-log_scale)
    error = max_error(z, expected)
    assert error < tol, (  # NaN fails here too
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
def test_density_is_one_made_pass(layer, points, randomize, dtype, device, tol):
    """MAF.inverse(x) is z = (x - shift) * exp(-log_scale), log-det -sum(log_scale), with
    (shift, log_scale) = made(x) from the layer's own MADE"""
    flow, name, order = layer
    expect_autoregressive(flow, name, order, points, randomize)
    made_name = f"{name}.made"
    expect_made_structure(
        flow.made, order, first_to_last(order), randomize, dtype, device, made_name
    )
    randomize(flow)  # expect_made_structure re-drew the MADE's weights alone
    expect_density_formula(flow, flow.made, name, points, tol)


def test_made_passes(layer, points, probes, randomize, tol):
    """MAF's density takes one MADE pass and its sampling `features` passes (or `features + 1`,
    one more for the log-det); credited with the values that make it true"""
    flow, name, order = layer
    features = len(order)
    expect_autoregressive(flow, name, order, points, randomize)
    expect_density_formula(flow, flow.made, name, points, tol)
    out, density = probes.made_passes(flow, "inverse", points)
    assert density >= 0, f"{name} should compute its shifts and log-scales with a MADE; it has none"
    expect_pair(out, f"{name}.inverse", *points.shape)
    out, sampling = probes.made_passes(flow, "forward", points)
    x, _ = expect_pair(out, f"{name}.forward", *points.shape)
    z, _ = expect_pair(flow.inverse(x.to(points.dtype)), f"{name}.inverse", *points.shape)
    error = max_error(z, points)
    assert error < tol, (
        f"{name}.forward (sampling) should invert the density map: inverse(forward(z)) differs "
        f"from z by up to {error:.3g}"
    )
    assert density == 1, (
        f"{name}.inverse (density) knows all of x, so one MADE pass gives every shift and "
        f"log-scale; it made {density} passes"
    )
    assert sampling in (features, features + 1), (
        f"{name}.forward (sampling) must produce the {features} variables one after the other, "
        f"one MADE pass each ({features} passes, or {features + 1} with one more for the "
        f"log-det); it made {sampling}"
    )


def test_log_det_is_linear_time(maf, randomize, check):
    """MAF's density with 2048 features is fast and computes no determinant"""
    features = 2048
    flow = randomize(maf.MAF(features, hidden_features=16, num_hidden=1))
    x = torch.randn(16, features)
    name = f"MAF with {features} features"
    expect_moves_later(flow, name, torch.arange(features), x)
    check.cheap(flow, x, name, ("inverse",))
    small = randomize(maf.MAF(16, hidden_features=16, num_hidden=1))
    x = torch.randn(16, 16)
    expect_moves_later(small, "MAF with 16 features", torch.arange(16), x)
    check.cheap(small, x, "MAF with 16 features", ("forward",))


@pytest.mark.weight(2)
def test_gradients_flow(maf, randomize, probes):
    """Training needs gradients: autograd's gradients of a MAF layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    order = random_order(3, 7)
    flow = randomize(maf.MAF(3, hidden_features=8, num_hidden=2, order=order).double())
    x = torch.randn(6, 3, dtype=torch.float64)
    expect_autoregressive(flow, f"MAF(3 features, order={order.tolist()})", order, x, randomize)
    for direction in ("forward", "inverse"):
        what = f"MAF(3 features, order={order.tolist()}).{direction}"
        for output, of in ((0, "the output"), (1, "log|det J|")):
            method = getattr(flow, direction)
            expect_gradients(probes, method, flow, (x,), what, of, output)


@pytest.mark.parametrize(
    ("features", "num_hidden"), [(1, 2), (4, 0)], ids=["one variable", "no hidden layer"]
)
def test_smallest_sizes(maf, randomize, check, features, num_hidden):
    """MAF works for a single variable (its shift and log-scale are learned constants) and with
    no hidden layer (MADE is one masked linear map): autoregressive, invertible, right log-det"""
    order = random_order(features, 5)
    flow = maf.MAF(features, hidden_features=6, num_hidden=num_hidden, order=order)
    flow = randomize(flow.double())
    name = f"MAF({features} feature(s), hidden_features=6, num_hidden={num_hidden})"
    x = torch.randn(4, features, dtype=torch.float64)
    # With no hidden layer every allowed connection is a weight of its own: all must be there.
    allowed = allowed_inputs(order)
    expect_made_structure(
        flow.made, order, allowed, randomize, torch.float64, torch.device("cpu"), f"{name}.made"
    )
    randomize(flow)
    shift, log_scale = made_outputs(flow.made, features)(x).split(features, dim=1)
    moves = float(shift[:, order[0]].abs().max() + log_scale[:, order[0]].abs().max())
    assert moves > MOVED, (
        f"{name}: the first variable in the order depends on nothing, so its shift and "
        "log-scale are learned constants; with random parameters they should not be 0, "
        f"got {float(shift[0, order[0]]):.3g} and {float(log_scale[0, order[0]]):.3g}"
    )
    expect_density_formula(flow, flow.made, name, x, 1e-8)
    check.invertible(flow, x, name)
    check.log_det_matches_jacobian(flow, x, name)
