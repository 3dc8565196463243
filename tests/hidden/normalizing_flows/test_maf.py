"""Hidden tests of ``flows/maf.py``: ``MaskedLinear``, ``MADE`` and ``MAF``.

MADE's outputs for variable ``order[k]`` may depend only on ``x[order[:k]]``; MAF evaluates the
density in one MADE pass and samples in ``features`` passes. Parameters are re-drawn at random
before every algebraic check (a fresh MADE outputs zeros, which hides leaks and signs).
"""

from __future__ import annotations

import pytest
import torch

# (features, hidden_features, num_hidden, seed of the order; None: the default order)
MADES = [(5, 16, 2, None), (6, 4, 2, 1), (7, 5, 1, 2), (4, 32, 3, 3), (3, 2, 1, 4)]


def made_id(config) -> str:
    features, hidden, num_hidden, seed = config
    order = "default order" if seed is None else f"order seed {seed}"
    return f"d{features}-h{hidden}x{num_hidden}-{order}"


def random_order(features: int, seed: int | None) -> torch.Tensor | None:
    if seed is None:
        return None
    return torch.randperm(features, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=MADES, ids=made_id)
def made(request, maf, randomize, dtype, device):
    """``(made, order)``: a randomized MADE, hidden width sometimes below ``features``."""
    features, hidden, num_hidden, seed = request.param
    order = random_order(features, seed)
    net = maf.MADE(features, hidden_features=hidden, num_hidden=num_hidden, order=order)
    net = randomize(net.to(device=device, dtype=dtype))
    return net, torch.arange(features) if order is None else order


def made_jacobians(net, x):
    """The Jacobians of MADE's shift and log-scale at one point, each ``(features, features)``."""
    return torch.autograd.functional.jacobian(lambda v: tuple(t[0] for t in net(v[None])), x[0])


@pytest.mark.weight(3)
def test_made_is_autoregressive(made, dtype, device):
    """MADE's outputs for order[k] depend only on x[order[:k]]"""
    net, order = made
    features = len(order)
    allowed = torch.zeros(features, features, dtype=torch.bool)
    for k in range(features):  # row: output variable, column: input variable
        allowed[order[k], order[:k]] = True
    seen = torch.zeros(features, features, dtype=torch.bool)
    for _ in range(3):
        x = torch.randn(1, features, dtype=dtype, device=device)
        for what, J in zip(("shift", "log_scale"), made_jacobians(net, x), strict=True):
            nonzero = (J != 0).cpu()
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


def test_made_output_shapes(maf, dtype):
    """MADE returns (shift, log_scale), each (batch, features)"""
    net = maf.MADE(5, hidden_features=8).to(dtype)
    out = net(torch.randn(3, 5, dtype=dtype))
    shapes = [tuple(t.shape) for t in out] if isinstance(out, tuple) else type(out).__name__
    assert shapes == [(3, 5), (3, 5)], (
        f"MADE(5)(x) on 3 samples should return (shift, log_scale) of shape (3, 5) each, "
        f"got {shapes}"
    )


def test_masked_linear_uses_mask(maf, randomize, dtype):
    """MaskedLinear computes x @ (W * mask).T + b"""
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=dtype)
    layer = randomize(maf.MaskedLinear(3, 2, mask).to(dtype))
    x = torch.randn(4, 3, dtype=dtype)
    expected = x @ (layer.weight * mask).T + layer.bias
    got = layer(x)
    assert torch.allclose(got, expected, atol=1e-10), (
        "MaskedLinear(3, 2, mask=[[1, 0, 1], [0, 0, 1]]) should compute x @ (W * mask).T + b, "
        f"using only the connections where mask = 1; expected {expected[0].tolist()}, "
        f"got {got[0].tolist()}"
    )


# (features, hidden_features, seed of the order)
MAFS = [(2, 8, None), (4, 16, 5), (5, 4, 6)]


@pytest.fixture(params=MAFS, ids=lambda c: f"d{c[0]}-h{c[1]}-order{c[2]}")
def layer(request, maf, randomize, dtype, device):
    """``(layer, name, features)``: a randomized MAF layer."""
    features, hidden, seed = request.param
    order = random_order(features, seed)
    flow = maf.MAF(features, hidden_features=hidden, num_hidden=2, order=order)
    flow = randomize(flow.to(device=device, dtype=dtype))
    described = "default order" if order is None else f"order={order.tolist()}"
    return flow, f"MAF({features} features, {described})", features


@pytest.fixture
def points(layer, dtype, device):
    return torch.randn(4, layer[2], dtype=dtype, device=device)


@pytest.mark.weight(2)
def test_invertible(layer, points, check):
    """A MAF layer's inverse undoes its forward, and the other way round"""
    flow, name, _ = layer
    check.invertible(flow, points, name)


@pytest.mark.weight(2)
def test_log_det_matches_autograd_jacobian(layer, points, check):
    """log|det J| of a MAF layer equals that of its autograd Jacobian, per sample"""
    flow, name, _ = layer
    check.log_det_matches_jacobian(flow, points, name)


def test_log_dets_negate(layer, points, check):
    """A MAF layer's forward and inverse log-determinants are opposite"""
    flow, name, _ = layer
    check.log_dets_negate(flow, points, name)


def test_batch_independent(layer, points, check):
    """A MAF layer transforms each sample on its own"""
    flow, name, _ = layer
    check.batch_independent(flow, points, name)


def count_made_calls(maf, flow) -> tuple[dict[str, int], list]:
    """Count the forward calls of every MADE inside ``flow`` with a hook."""
    calls = {"n": 0}
    mades = [m for m in flow.modules() if isinstance(m, maf.MADE)]

    def hook(*_):
        calls["n"] += 1

    handles = [m.register_forward_hook(hook) for m in mades]
    return calls, handles


@pytest.mark.weight(2)
def test_made_passes(layer, points, maf):
    """MAF's density takes one MADE pass and its sampling `features` passes"""
    flow, name, features = layer
    calls, handles = count_made_calls(maf, flow)
    try:
        assert handles, f"{name} should compute its shifts and log-scales with a MADE; it has none"
        flow.inverse(points)
        density = calls["n"]
        calls["n"] = 0
        flow(points)
        sampling = calls["n"]
    finally:
        for handle in handles:
            handle.remove()
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
    check.cheap(flow, torch.randn(16, features), f"MAF with {features} features", ("inverse",))
    small = randomize(maf.MAF(16, hidden_features=16, num_hidden=1))
    check.cheap(small, torch.randn(16, 16), "MAF with 16 features", ("forward",))
