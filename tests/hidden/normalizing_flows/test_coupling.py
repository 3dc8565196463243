"""Hidden tests of ``flows/coupling.py``: ``AdditiveCoupling`` (NICE) and ``AffineCoupling``.

The layers are listed once (:data:`CASES`: both kinds, sizes 2 to 7, odd masks, other network
shapes) and every check runs over all of them, on parameters re-drawn at random (a fresh layer
is the identity, which hides a wrong sign), in the ``--dtype`` (float64 by default). The layers
live in the worker; derivatives are finite differences measured here; the second direction of
every round trip is asked of the layer rebuilt in the part's evaluation worker
(:mod:`autograder.checks`).

Being *a* bijection is not enough: the identity, a constant shift, a fixed scaling or a dense
invertible map pass the bijection checks too. So every test first checks the whole pattern of a
coupling (:func:`expect_coupling`): finite outputs, then the forbidden dependencies (the entries
where ``mask = 1`` are copied; an entry where ``mask = 0`` depends on no other such entry) and
the required ones (those entries move with the ``mask = 1`` entries; an affine layer's slopes
move with them too) together, so no test credits a NaN, constant, dense or degenerate layer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from autograder.checks import LayerCase, expect_pair, jacobians, max_error

MASKS = {
    "[1, 0]": [1, 0],
    "[0, 1, 1]": [0, 1, 1],
    "[0, 1, 0, 1]": [0, 1, 0, 1],
    "[1, 1, 0, 0, 0]": [1, 1, 0, 0, 0],
    "[1, 0, 0, 1, 0, 1, 1]": [1, 0, 0, 1, 0, 1, 1],
}
KINDS = ("AdditiveCoupling", "AffineCoupling")
# A change smaller than this is "no change": far above float64 finite-difference noise (~1e-9)
# and far below what random parameters (std 0.3) produce (~1e-1).
MOVED = 1e-6


def coupling_case(kind: str, mask: str, hidden: int = 16, num_hidden: int = 2) -> LayerCase:
    values = MASKS[mask]
    shape = (hidden, num_hidden)
    sizes = "" if shape == (16, 2) else f", {hidden}, {num_hidden}"
    return LayerCase(
        f"{kind}(mask={mask}{sizes})",
        lambda m: getattr(m.coupling, kind)(torch.tensor(values, dtype=torch.float32), *shape),
        features=len(values),
        meta=torch.tensor(values, dtype=torch.bool),
    )


CASES = [coupling_case(kind, mask) for kind in KINDS for mask in MASKS] + [
    coupling_case("AffineCoupling", "[0, 1, 1]", hidden=5, num_hidden=1),
    coupling_case("AdditiveCoupling", "[1, 0, 0, 1, 0, 1, 1]", hidden=32, num_hidden=3),
]


CASE = {case.name: case for case in CASES}


def mask_of(case: LayerCase) -> torch.Tensor:
    """The case's mask, as booleans (``meta`` of :func:`coupling_case`)."""
    return case.meta


@pytest.fixture(params=CASES, ids=str)
def case(request) -> LayerCase:
    return request.param


def coupled(case: LayerCase, modules, dtype: torch.dtype, tol: float):
    """A randomized layer of the case, its whole pattern checked first (:func:`expect_coupling`):
    only a coupling layer earns the checks after this one."""
    flow = case.layer(modules, dtype)
    expect_coupling(flow, case.name, mask_of(case), case.inputs("pattern", dtype), tol)
    return flow


def passive_redrawn(x: torch.Tensor, mask: torch.Tensor, seed: int = 11) -> torch.Tensor:
    """``x`` with its passive entries (``mask = 1``) drawn anew and its active ones kept."""
    fresh = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed))
    out = x.clone()
    out[:, mask] = fresh[:, mask]
    return out


def output_of(method, label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> method(v)[0]``, checked (finite), for :func:`jacobians`."""
    return lambda v: expect_pair(method(v), label, *v.shape)[0]


def expect_coupling(
    flow, name: str, mask: torch.Tensor, x: torch.Tensor, tol: float, directions=("forward",)
) -> None:
    """The whole pattern of a coupling's Jacobian (finite differences at ``x`` and at ``x`` with
    its ``mask = 1`` entries redrawn), forbidden and required dependencies together:

    - the ``mask = 1`` outputs are their inputs (Jacobian rows of the identity);
    - each ``mask = 0`` output depends on itself among the ``mask = 0`` inputs, on no other;
    - the ``mask = 0`` outputs depend on the ``mask = 1`` inputs (through the network);
    - additive: slope 1 on the diagonal; affine: slopes that change with the ``mask = 1`` inputs.
    """
    n, d = x.shape
    kept, active = mask, ~mask
    points = torch.cat([x, passive_redrawn(x, mask)])
    for direction in directions:
        label = f"{name}.{direction}"
        J = jacobians(output_of(getattr(flow, direction), label), points)  # (2n, out, in)
        copied = max_error(
            J[:, kept], torch.eye(d, dtype=torch.float64)[kept].expand(2 * n, -1, -1)
        )
        assert copied < tol, (
            f"{label}: the entries where mask = 1 should pass through unchanged (their "
            f"Jacobian rows those of the identity); they differ by {copied:.3g}"
        )
        from_passive = float(J[:, active][:, :, kept].abs().max())
        assert from_passive > MOVED, (
            f"{label}: with random parameters the entries where mask = 0 should depend on the "
            f"entries where mask = 1 (through the network); that Jacobian block is "
            f"{from_passive:.3g} everywhere, so the layer is not a coupling transform"
        )
        within = J[:, active][:, :, active]
        slopes = torch.diagonal(within, dim1=1, dim2=2)
        crossed = float((within - torch.diag_embed(slopes)).abs().max())
        assert crossed < tol, (
            f"{label}: each entry where mask = 0 should depend on itself and the mask = 1 "
            f"entries only, not on the other mask = 0 entries; that Jacobian block has "
            f"off-diagonal entries up to {crossed:.3g} (finite differences)"
        )
        if name.startswith("AdditiveCoupling"):
            off_one = float((slopes - 1).abs().max())
            assert off_one < tol, (
                f"{label} only shifts the entries where mask = 0, so d out_i / d in_i should "
                f"be 1 there; it is {slopes[0].tolist()} for sample 0"
            )
        else:
            varied = max_error(slopes[:n], slopes[n:])
            assert varied > MOVED and float(slopes.abs().min()) > MOVED, (
                f"{label} should scale each entry where mask = 0 by exp(s) (never 0) with s "
                "computed from the entries where mask = 1; changing those left the scales "
                f"{slopes[0].tolist()} (sample 0) as they were"
            )


@pytest.mark.weight(2)
def test_jacobian_is_a_coupling(case, modules, dtype, jacobian_tol):
    """The Jacobian (finite differences) is a coupling's, both ways: the mask = 1 entries are
    copied, the others depend on them and each on itself only, with slope exp(s(passive))
    (affine) or 1 (additive); outputs finite"""
    flow = case.layer(modules, dtype)
    x = case.inputs("jacobian", dtype)
    expect_coupling(flow, case.name, mask_of(case), x, jacobian_tol, ("forward", "inverse"))


@pytest.mark.weight(2)
def test_invertible(case, modules, check, dtype, jacobian_tol):
    """A coupling layer's inverse undoes its forward, and the other way round"""
    layer = coupled(case, modules, dtype, jacobian_tol)
    check.invertible(layer, case.inputs("invertible", dtype), case.name)


@pytest.mark.weight(2)
def test_log_det_matches_jacobian(case, modules, check, dtype, jacobian_tol):
    """log|det J| of a coupling layer equals that of its Jacobian, per sample"""
    layer = coupled(case, modules, dtype, jacobian_tol)
    check.log_det_matches_jacobian(layer, case.inputs("log-det", dtype), case.name)


def test_log_dets_negate(case, modules, check, dtype, jacobian_tol):
    """A coupling layer's forward and inverse log-determinants are opposite"""
    layer = coupled(case, modules, dtype, jacobian_tol)
    check.log_dets_negate(layer, case.inputs("negate", dtype), case.name)


def test_batch_independent(case, modules, check, dtype, jacobian_tol):
    """A coupling layer transforms each sample on its own"""
    layer = coupled(case, modules, dtype, jacobian_tol)
    check.batch_independent(layer, case.inputs("batch", dtype), case.name)


def test_masked_half_passes_through(case, modules, dtype, jacobian_tol):
    """The entries with mask = 1 pass through unchanged (bit for bit), both ways"""
    layer = coupled(case, modules, dtype, jacobian_tol)
    kept = mask_of(case)
    points = case.inputs("passthrough", dtype)
    for direction in ("forward", "inverse"):
        label = f"{case.name}.{direction}"
        out, _ = expect_pair(getattr(layer, direction)(points), label, *points.shape)
        assert torch.equal(out[:, kept], points[:, kept]), (
            f"{label}: the entries where mask = 1 should be copied unchanged; input "
            f"{points[0, kept].tolist()} came out as {out[0, kept].tolist()}"
        )


def test_additive_is_volume_preserving(modules, dtype, jacobian_tol):
    """NICE's additive coupling has log|det J| = 0"""
    for case in CASES:
        if not case.name.startswith("AdditiveCoupling") or case.features < 4:
            continue
        flow = case.layer(modules, dtype)
        z = case.inputs("volume", dtype, n=5)
        expect_coupling(flow, case.name, mask_of(case), z, jacobian_tol)
        for direction in ("forward", "inverse"):
            label = f"{case.name}.{direction}"
            _, log_abs_det = expect_pair(getattr(flow, direction)(z), label, *z.shape)
            assert torch.count_nonzero(log_abs_det) == 0, (
                f"{label} only shifts, so log|det J| should be 0 for every sample; got "
                f"{log_abs_det.tolist()}"
            )


def diagonal_slopes(flow, direction: str, x: torch.Tensor, active: torch.Tensor, label: str):
    """The slopes d out_i / d in_i of the active entries, from one pair of calls: in a coupling
    an active output depends on no other active input, so moving all of them at once measures
    every diagonal entry (central differences in float64)."""
    eps = 1e-5
    step = torch.zeros(x.shape[1], dtype=torch.float64)
    step[active] = eps
    plus, _ = expect_pair(getattr(flow, direction)(x + step), label, *x.shape)
    minus, _ = expect_pair(getattr(flow, direction)(x - step), label, *x.shape)
    return ((plus - minus)[:, active] / (2 * eps)).double()


@pytest.mark.parametrize("kind", KINDS)
def test_log_det_is_linear_time(modules, kind, check, jacobian_tol):
    """A coupling layer with 4096 features gets log|det J| right and computes no determinant"""
    features = 4096
    mask = torch.arange(features) % 2 == 1
    case = LayerCase(
        f"{kind} with {features} features",
        lambda m: getattr(m.coupling, kind)(mask.float(), hidden_features=8, num_hidden=1),
        features=features,
        batch=8,
    )
    flow = case.layer(modules, torch.float64)
    z = case.inputs("wide")
    for direction in ("forward", "inverse"):
        label = f"{case.name}.{direction}"
        out, log_det = expect_pair(getattr(flow, direction)(z), label, *z.shape)
        slopes = diagonal_slopes(flow, direction, z, ~mask, label)
        moved = max_error(out[:, ~mask], z[:, ~mask])
        assert moved > MOVED and max_error(out[:, mask], z[:, mask]) == 0, (
            f"{label} with random parameters should move the entries where mask = 0 and copy "
            "the others"
        )
        expected = slopes.abs().log().sum(-1)
        error = max_error(log_det, expected)
        assert error < 100 * jacobian_tol, (
            f"{label}: log|det J| should be the sum of log|slope| of the entries where mask = 0 "
            f"(measured by finite differences: {float(expected[0]):.6f} for sample 0); got "
            f"{float(log_det[0]):.6f}"
        )
    check.cheap(flow, z, case.name)


@pytest.mark.weight(2)
def test_gradients_flow(modules, check, jacobian_tol):
    """Training needs gradients: autograd's gradients of a coupling layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    names = ("AdditiveCoupling(mask=[0, 1, 0, 1])", "AffineCoupling(mask=[0, 1, 0, 1])")
    for case in (*(CASE[name] for name in names), CASES[-2]):
        flow = case.layer(modules, torch.float64)
        x = case.inputs("gradients", n=6)
        expect_coupling(flow, case.name, mask_of(case), x, jacobian_tol)
        check.gradients(flow, x, case.name)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_layer_is_finite(modules, kind, jacobian_tol):
    """A freshly built coupling layer (whatever its initial parameters) maps finite points to
    finite points with finite log-determinants, both ways"""
    case = coupling_case(kind, "[1, 0, 0, 1, 0, 1, 1]")
    fresh = LayerCase(f"a fresh {case.name}", case.build, case.features, randomize=None)
    flow = fresh.layer(modules, torch.float64)
    x = case.inputs("fresh", n=5)
    for direction in ("forward", "inverse"):
        expect_pair(getattr(flow, direction)(x), f"{fresh.name}.{direction}", *x.shape)
    # Only a coupling layer earns this test: the identity is finite too.
    randomized = case.layer(modules, torch.float64)
    expect_coupling(randomized, case.name, mask_of(case), x, jacobian_tol)
