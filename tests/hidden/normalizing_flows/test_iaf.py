"""Hidden tests of ``flows/iaf.py``: ``IAF``, MAF's MADE used the other way round.

IAF samples in one MADE pass, ``x = z * exp(log_scale) + shift`` with ``(shift, log_scale) =
made(z)`` and log-det ``sum(log_scale)``, and evaluates the density in ``features`` passes.
Parameters are re-drawn at random before every check (a fresh MADE outputs zeros, which hides
leaks and signs); Jacobians are finite differences measured here.

Every IAF-layer test starts with the whole pattern of its sampling map ``z -> x``
(:func:`maf_structure.expect_autoregressive` with ``direction="forward"``: finite, no forbidden
dependency, the required ones), so no test credits an identity, constant, dense or NaN layer.
The second direction of every round trip, and the MADE whose outputs the sampling must be made
of, are asked of the layer's twin, rebuilt in the part's evaluation worker. The pass counts
are the worker's word (counted at the MADE class): one point, credited only beside the values
that make them true.
"""

from __future__ import annotations

import pytest
import torch
from maf_structure import (
    DRAWS,
    MOVED,
    expect_autoregressive,
    expect_made_structure,
    expect_moves_later,
    expect_one_pass_formula,
    first_to_last,
    random_order,
)

from autograder.checks import LayerCase, expect_pair, max_error
from autograder.grading import remote

ORDERS: dict[str, torch.Tensor] = {}  # each IAF case's order, by its name


def iaf_case(features: int, hidden: int, seed: int | None, num_hidden: int = 2) -> LayerCase:
    order = random_order(features, seed)
    described = "default order" if order is None else f"order={order.tolist()}"
    name = f"IAF({features} features, {described}, hidden={hidden}x{num_hidden})"
    ORDERS[name] = torch.arange(features) if order is None else order
    return LayerCase(
        name,
        lambda m: m.iaf.IAF(features, hidden_features=hidden, num_hidden=num_hidden, order=order),
        features,
        meta=(hidden, num_hidden),
    )


# Sizes 2 to 7, random orders, hidden layers narrower than the features, no hidden layer.
CASES = [iaf_case(2, 8, None), iaf_case(3, 2, 11), iaf_case(4, 16, 12), iaf_case(5, 4, 13, 1)]
CASES += [iaf_case(6, 16, 14, 0)]


def iaf_layer(case: LayerCase, modules, dtype, key: str):
    """``(flow, order, z)``: the case's layer, after its sampling pattern is checked at ``z``."""
    flow = case.layer(modules, dtype)
    order = ORDERS[case.name]
    z = case.inputs(key, dtype)
    expect_autoregressive(flow, case.name, order, z, direction="forward")
    return flow, order, z


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_invertible(case, modules, check, dtype):
    """An IAF layer's inverse (density) undoes its forward (sampling), and the other way round"""
    flow, _, z = iaf_layer(case, modules, dtype, "invertible")
    check.invertible(flow, z, case.name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_log_det_matches_jacobian(case, modules, check, dtype):
    """log|det J| of an IAF layer equals that of its Jacobian, per sample, both directions"""
    flow, _, z = iaf_layer(case, modules, dtype, "log-det")
    check.log_det_matches_jacobian(flow, z, case.name)


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_log_dets_negate(case, modules, check, dtype):
    """An IAF layer's forward and inverse log-determinants are opposite"""
    flow, _, z = iaf_layer(case, modules, dtype, "negate")
    check.log_dets_negate(flow, z, case.name)


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_batch_independent(case, modules, check, dtype):
    """An IAF layer transforms each sample on its own"""
    flow, _, z = iaf_layer(case, modules, dtype, "batch")
    check.batch_independent(flow, z, case.name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_sampling_is_one_made_pass(case, modules, check, dtype, tol):
    """IAF.forward(z) is x = z * exp(log_scale) + shift, log-det sum(log_scale), with
    (shift, log_scale) = made(z) from the layer's own MADE"""
    flow, order, z = iaf_layer(case, modules, dtype, "sampling")
    name = f"{case.name}.made"
    expect_made_structure(flow.made, order, first_to_last(order), dtype, name)
    remote.randomize(flow, DRAWS[0])  # the structure check re-drew the MADE's weights alone
    twin = check.faithful_twin(flow, z, case.name)
    expect_one_pass_formula(flow, twin.made, case.name, z, tol, "forward")


@pytest.mark.parametrize("case", CASES[1:4], ids=str)
def test_made_passes(case, modules, check, probes, dtype, tol):
    """IAF's sampling takes one MADE pass and its density `features` passes (or `features + 1`,
    one more for the log-det); credited with the values that make it true"""
    flow, _, z = iaf_layer(case, modules, dtype, "passes")
    name, features = case.name, case.features
    twin = check.faithful_twin(flow, z, name)
    expect_one_pass_formula(flow, twin.made, name, z, tol, "forward")
    out, sampling = probes.made_passes(flow, "forward", z)
    assert sampling >= 0, (
        f"{name} should compute its shifts and log-scales with a MADE; it has none"
    )
    expect_pair(out, f"{name}.forward", *z.shape)
    x = z.double() * 1.5 + 0.25  # data-space points the harness chose
    out, density = probes.made_passes(flow, "inverse", x.to(dtype))
    recovered, _ = expect_pair(out, f"{name}.inverse", *z.shape)
    back, _ = expect_pair(twin(recovered.to(dtype)), f"{name}.forward (its twin)", *z.shape)
    error = max_error(back, x)
    assert error < tol, (
        f"{name}.inverse (density) should invert the sampling map: sampling its output, asked "
        f"of a rebuilt copy, differs from x by up to {error:.3g}"
    )
    assert sampling == 1, (
        f"{name}.forward (sampling) knows all of z, so one MADE pass gives every shift and "
        f"log-scale; it made {sampling} passes"
    )
    assert density in (features, features + 1), (
        f"{name}.inverse (density) must recover the {features} base variables one after the "
        f"other, one MADE pass each ({features} passes, or {features + 1} with one more for "
        f"the log-det); it made {density}"
    )


MIRROR_CASES = [iaf_case(3, 8, 21), iaf_case(5, 16, 22)]


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", MIRROR_CASES, ids=str)
def test_mirror_of_maf(case, modules, dtype):
    """On the same MADE weights, IAF.forward(u) and MAF.inverse(u) use the same (shift,
    log_scale) = made(u): x - u = exp(log_scale) * (u - z) per variable, where x is IAF's sample
    and z MAF's density map, and their log-dets are opposite"""
    flow, order, u = iaf_layer(case, modules, dtype, "mirror")
    features = case.features
    hidden, num_hidden = case.meta
    maf = modules.maf.MAF(features, hidden_features=hidden, num_hidden=num_hidden, order=order)
    maf.to(dtype=dtype)
    maf.made.load_state_dict(flow.made.state_dict())
    x, forward = expect_pair(flow(u), f"{case.name}.forward", *u.shape)
    z, inverse = expect_pair(maf.inverse(u), f"MAF with {case.name}'s MADE .inverse", *u.shape)
    error = max_error(forward, -inverse)
    assert error < 1e-6, (
        f"{case.name}: IAF.forward(u) and MAF.inverse(u) on the same MADE both take log_scale = "
        f"made(u), so their log-dets sum(log_scale) and -sum(log_scale) should be opposite; "
        f"got {forward.tolist()} and {inverse.tolist()}"
    )
    # From x = u e^s + t and z = (u - t) e^-s: x - u = e^s (u - z) exactly, per variable.
    u64, x64, z64 = u.double(), x.double(), z.double()
    gap = (u64 - z64).abs()
    usable = gap > 1e-3
    assert bool(usable.any()), f"{case.name}: MAF.inverse(u) equals u everywhere; no MADE at work"
    ratio = ((x64 - u64) / (u64 - z64))[usable]
    assert bool((ratio > 0).all()), (
        f"{case.name}: IAF's x - u and MAF's u - z should have the same sign for each variable "
        "(their ratio is exp(log_scale) of the shared MADE); they do not"
    )
    log_ratio = torch.where(usable, ((x64 - u64) / (u64 - z64)).abs().log(), 0.0)
    full = usable.all(dim=1)
    assert bool(full.any()), f"{case.name}: no sample where every u - MAF.inverse(u) is nonzero"
    error = max_error(log_ratio.sum(-1)[full], forward.double()[full])
    assert error < 1e-5, (
        f"{case.name}: with x = u * exp(s) + t (IAF) and z = (u - t) * exp(-s) (MAF) on the "
        f"same MADE, log((x - u) / (u - z)) summed over the variables is sum(s), the log-det; "
        f"it differs from IAF's log-det by {error:.3g}"
    )


def test_sampling_is_linear_time(modules, check):
    """IAF's sampling with 256 features computes no determinant, inverse or Jacobian, nor does
    its density with 16"""
    case = iaf_case(256, 16, None, num_hidden=1)
    flow = case.layer(modules, torch.float32)
    z = case.inputs("cheap", torch.float32, n=16)
    moved = z.clone()
    moved[:, 0] += 1.0
    x, _ = expect_pair(flow(torch.cat([z, moved])), f"{case.name}.forward", 32, 256)
    change = max_error(x[:16, 1:], x[16:, 1:])
    assert change > MOVED, (
        f"{case.name}.forward with random parameters: changing z[0] alone changed the later "
        f"variables by {change:.3g}, so the layer is not autoregressive"
    )
    check.cheap(flow, z, case.name, ("forward",))
    small = iaf_case(16, 16, None, num_hidden=1)
    flow = small.layer(modules, torch.float32)
    x = small.inputs("cheap", torch.float32, n=16)
    expect_moves_later(flow, small.name, torch.arange(16), x)
    check.cheap(flow, x, small.name, ("inverse",))


@pytest.mark.weight(2)
def test_gradients_flow(modules, check):
    """Training needs gradients: autograd's gradients of an IAF layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    case = iaf_case(3, 8, 23)
    flow, _, z = iaf_layer(case, modules, torch.float64, "gradients")
    check.gradients(flow, z, case.name)


def test_single_variable(modules, check):
    """IAF works for a single variable: its shift and log-scale are learned constants"""
    case = iaf_case(1, 6, None)
    flow = case.layer(modules, torch.float64)
    z = case.inputs("single", torch.float64)
    twin = check.faithful_twin(flow, z, case.name)
    shift, log_scale = expect_one_pass_formula(flow, twin.made, case.name, z, 1e-8, "forward")
    moves = float(shift.abs().max() + log_scale.abs().max())
    assert moves > MOVED, (
        f"{case.name}: a single variable's shift and log-scale are learned constants; with "
        f"random parameters they should not be 0, got {float(shift[0, 0]):.3g} and "
        f"{float(log_scale[0, 0]):.3g}"
    )
    check.invertible(flow, z, case.name)
    check.log_det_matches_jacobian(flow, z, case.name)
