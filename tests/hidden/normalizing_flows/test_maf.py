"""Hidden tests of ``flows/maf.py``: ``MaskedLinear``, ``MADE`` and ``MAF``.

MADE's outputs for variable ``order[k]`` may depend only on ``x[order[:k]]``; MAF evaluates the
density in one MADE pass, ``z = (x - shift) * exp(-log_scale)`` with ``(shift, log_scale) =
made(x)``, and samples in ``features`` passes. Parameters are re-drawn at random before every
check (a fresh MADE outputs zeros, which hides leaks and signs). The networks live in the
worker; their Jacobians are finite differences measured here.

Every structure test sees the whole pattern (:mod:`maf_structure`): finite outputs, no
forbidden dependency, and the dependencies every valid MADE has at that size, together; every
MAF-layer test starts with the layer's density pattern, so no test credits a constant, NaN,
dense or degenerate network. The second direction of every round trip, and the MADE whose
outputs the density must be made of, are asked of the layer's twin, rebuilt in the part's
evaluation worker (``check.twin``), which never saw the first direction's answer.

How many times a MAF calls its MADE is the worker's word (counted in the worker, at the MADE
class's ``forward``): it carries one point per layer, and is credited only with the values that
make it true (the density is the formula with the twin's MADE; sampling inverts the twin).
"""

from __future__ import annotations

import pytest
import torch
from maf_structure import (
    DRAWS,
    MOVED,
    allowed_inputs,
    expect_autoregressive,
    expect_density_formula,
    expect_made_structure,
    expect_moves_later,
    first_to_last,
    made_outputs,
    random_order,
)

from autograder.checks import LayerCase, expect_pair, expect_tensor, max_error
from autograder.grading import remote

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
# Wide: hidden layers of at least 8 (features - 1) units (see maf_structure).
WIDE_MADES = [(5, 64, 2, None), (4, 48, 2, 3), (6, 64, 1, 1), (3, 40, 3, 6), (7, 64, 2, 7)]


def made_id(config) -> str:
    features, hidden, num_hidden, seed = config
    order = "default order" if seed is None else f"order seed {seed}"
    return f"d{features}-h{hidden}x{num_hidden}-{order}"


def build_made(modules, config, dtype):
    """``(made, order, name)``: a MADE (weights re-drawn by the check) and its order."""
    features, hidden, num_hidden, seed = config
    order = random_order(features, seed)
    net = modules.maf.MADE(features, hidden_features=hidden, num_hidden=num_hidden, order=order)
    net.to(dtype=dtype)
    order = torch.arange(features) if order is None else order
    return net, order, f"MADE({features} features, order={order.tolist()}, hidden={hidden})"


@pytest.mark.weight(3)
@pytest.mark.parametrize("config", MADES, ids=made_id)
def test_made_is_autoregressive(modules, dtype, config):
    """MADE's outputs for order[k] depend only on x[order[:k]], and the last variable's on the
    first (finite outputs, at any width)"""
    net, order, name = build_made(modules, config, dtype)
    expect_made_structure(net, order, first_to_last(order), dtype, name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("config", WIDE_MADES, ids=made_id)
def test_made_uses_every_allowed_input(modules, dtype, config):
    """A wide MADE with random weights: the outputs for order[k] depend on each of x[order[:k]]
    and on nothing else (finite outputs)"""
    net, order, name = build_made(modules, config, dtype)
    expect_made_structure(net, order, allowed_inputs(order), dtype, name)


@pytest.mark.parametrize("features", [1, 5])
def test_made_output_shapes(modules, dtype, features):
    """MADE returns (shift, log_scale), each (batch, features), for a batch of one too"""
    net, order, name = build_made(modules, (features, 8, 2, None), dtype)
    remote.randomize(net, DRAWS[0])
    for batch in (3, 1):
        out = net(torch.randn(batch, features, dtype=dtype))
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
    expect_made_structure(net, order, first_to_last(order), dtype, name)


MASKS = {
    "2x3": torch.tensor([[1, 0, 1], [0, 0, 1]]),
    "5x7 random": (torch.rand(5, 7, generator=torch.Generator().manual_seed(3)) < 0.5).long(),
}


@pytest.mark.parametrize("key", list(MASKS))
def test_masked_linear_uses_mask(modules, dtype, tol, key):
    """MaskedLinear computes x @ (W * mask).T + b"""
    mask = MASKS[key].to(dtype)
    out_features, in_features = mask.shape
    name = f"MaskedLinear({in_features}, {out_features}, mask={mask.long().tolist()})"
    layer = modules.maf.MaskedLinear(in_features, out_features, mask)
    layer.to(dtype=dtype)
    remote.randomize(layer, DRAWS[0])
    weight = expect_tensor(remote.fetch(layer.weight), f"{name}.weight", tuple(mask.shape))
    bias = expect_tensor(remote.fetch(layer.bias), f"{name}.bias", (out_features,))
    x = torch.randn(4, in_features, dtype=dtype)
    expected = x.double() @ (weight.double() * mask.double()).T + bias.double()
    got = expect_tensor(layer(x), f"{name}(x) on 4 samples", (4, out_features))
    error = max_error(got, expected)
    assert error < tol, (  # a NaN fails here too (NaN < tol is false)
        f"{name} should compute x @ (W * mask).T + b, using only the connections where mask = 1; "
        f"expected {expected[0].tolist()}, got {got[0].tolist()}"
    )


ORDERS: dict[str, torch.Tensor] = {}  # each MAF case's order, by its name


def maf_case(features: int, hidden: int, seed: int | None, num_hidden: int = 2) -> LayerCase:
    order = random_order(features, seed)
    described = "default order" if order is None else f"order={order.tolist()}"
    name = f"MAF({features} features, {described}, hidden={hidden}x{num_hidden})"
    ORDERS[name] = torch.arange(features) if order is None else order
    return LayerCase(
        name,
        lambda m: m.maf.MAF(features, hidden_features=hidden, num_hidden=num_hidden, order=order),
        features,
    )


# Sizes 2, 3, 4, 5, 7, odd random orders, hidden layers narrower than the features.
CASES = [maf_case(2, 8, None), maf_case(3, 2, 5), maf_case(4, 16, 5), maf_case(5, 4, 6)]
CASES += [maf_case(7, 16, 8)]


def maf_layer(case: LayerCase, modules, dtype, key: str):
    """``(flow, order, x)``: the case's layer, after its density pattern is checked at ``x``."""
    flow = case.layer(modules, dtype)
    order = ORDERS[case.name]
    x = case.inputs(key, dtype)
    expect_autoregressive(flow, case.name, order, x)
    return flow, order, x


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_invertible(case, modules, check, dtype):
    """A MAF layer's inverse undoes its forward, and the other way round"""
    flow, _, x = maf_layer(case, modules, dtype, "invertible")
    check.invertible(flow, x, case.name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_log_det_matches_jacobian(case, modules, check, dtype):
    """log|det J| of a MAF layer equals that of its Jacobian, per sample"""
    flow, _, x = maf_layer(case, modules, dtype, "log-det")
    check.log_det_matches_jacobian(flow, x, case.name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_log_dets_negate(case, modules, check, dtype):
    """A MAF layer's forward and inverse log-determinants are opposite"""
    flow, _, x = maf_layer(case, modules, dtype, "negate")
    check.log_dets_negate(flow, x, case.name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_batch_independent(case, modules, check, dtype):
    """A MAF layer transforms each sample on its own"""
    flow, _, x = maf_layer(case, modules, dtype, "batch")
    check.batch_independent(flow, x, case.name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_density_is_one_made_pass(case, modules, check, dtype, tol):
    """MAF.inverse(x) is z = (x - shift) * exp(-log_scale), log-det -sum(log_scale), with
    (shift, log_scale) = made(x) from the layer's own MADE"""
    flow, order, x = maf_layer(case, modules, dtype, "density")
    name = f"{case.name}.made"
    expect_made_structure(flow.made, order, first_to_last(order), dtype, name)
    remote.randomize(flow, DRAWS[0])  # the structure check re-drew the MADE's weights alone
    expect_density_formula(flow, check.faithful_twin(flow, x, case.name).made, case.name, x, tol)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_made_passes(case, modules, check, probes, dtype, tol):
    """MAF's density takes one MADE pass and its sampling `features` passes (or `features + 1`,
    one more for the log-det); credited with the values that make it true"""
    flow, _, x = maf_layer(case, modules, dtype, "passes")
    name, features = case.name, case.features
    twin = check.faithful_twin(flow, x, name)
    expect_density_formula(flow, twin.made, name, x, tol)
    out, density = probes.made_passes(flow, "inverse", x)
    assert density >= 0, f"{name} should compute its shifts and log-scales with a MADE; it has none"
    expect_pair(out, f"{name}.inverse", *x.shape)
    out, sampling = probes.made_passes(flow, "forward", x)
    sample, _ = expect_pair(out, f"{name}.forward", *x.shape)
    z, _ = expect_pair(twin.inverse(sample.to(dtype)), f"{name}.inverse (its twin)", *x.shape)
    error = max_error(z, x)
    assert error < tol, (
        f"{name}.forward (sampling) should invert the density map: the density of its output, "
        f"asked of a rebuilt copy, differs from z by up to {error:.3g}"
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


def test_log_det_is_linear_time(modules, check):
    """MAF's density with 2048 features is fast and computes no determinant"""
    for features, direction in ((2048, "inverse"), (16, "forward")):
        case = maf_case(features, 16, None, num_hidden=1)
        flow = case.layer(modules, torch.float32)
        x = case.inputs("cheap", torch.float32, n=16)
        expect_moves_later(flow, case.name, torch.arange(features), x)
        check.cheap(flow, x, case.name, (direction,))


GRADIENT_CASES = [maf_case(3, 8, 7)]


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", GRADIENT_CASES, ids=str)
def test_gradients_flow(case, modules, check):
    """Training needs gradients: autograd's gradients of a MAF layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    flow, _, x = maf_layer(case, modules, torch.float64, "gradients")
    check.gradients(flow, x, case.name)


@pytest.mark.parametrize(
    ("features", "num_hidden"), [(1, 2), (4, 0)], ids=["one variable", "no hidden layer"]
)
def test_smallest_sizes(modules, check, features, num_hidden):
    """MAF works for a single variable (its shift and log-scale are learned constants) and with
    no hidden layer (MADE is one masked linear map): autoregressive, invertible, right log-det"""
    case = maf_case(features, 6, 5, num_hidden=num_hidden)
    flow = case.layer(modules, torch.float64)
    order, name, x = ORDERS[case.name], case.name, case.inputs("smallest", torch.float64)
    # With no hidden layer every allowed connection is a weight of its own: all must be there.
    expect_made_structure(flow.made, order, allowed_inputs(order), torch.float64, f"{name}.made")
    remote.randomize(flow, DRAWS[0])
    twin = check.faithful_twin(flow, x, name)
    both = made_outputs(twin.made, f"{name}.made")(x)
    shift, log_scale = both[:, :features], both[:, features:]
    moves = float(shift[:, order[0]].abs().max() + log_scale[:, order[0]].abs().max())
    assert moves > MOVED, (
        f"{name}: the first variable in the order depends on nothing, so its shift and "
        "log-scale are learned constants; with random parameters they should not be 0, "
        f"got {float(shift[0, order[0]]):.3g} and {float(log_scale[0, order[0]]):.3g}"
    )
    expect_density_formula(flow, twin.made, name, x, 1e-8)
    check.invertible(flow, x, name)
    check.log_det_matches_jacobian(flow, x, name)
