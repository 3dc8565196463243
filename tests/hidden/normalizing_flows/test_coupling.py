"""Hidden tests of ``flows/coupling.py``: ``AdditiveCoupling`` (NICE) and ``AffineCoupling``.

Every check runs on a layer whose parameters were re-drawn at random (a fresh layer is the
identity, which hides a wrong sign), in the ``--dtype`` (float64 by default). The layers live in
the worker; derivatives are finite differences measured here.

Being *a* bijection is not enough: the identity, a constant shift or a fixed scaling are
invertible, batch independent and have the right log-determinant too. So every test first
checks that the layer is a coupling transform at all (:func:`expect_coupled`: the entries where
``mask = 0`` move by amounts that depend on the entries where ``mask = 1``), and
``test_jacobian_is_a_coupling`` pins down the structure of the Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import expect_gradients, expect_pair, jacobians, max_error

MASKS = {
    "[1, 0]": [1, 0],
    "[0, 1, 0, 1]": [0, 1, 0, 1],
    "[1, 1, 0, 0, 0]": [1, 1, 0, 0, 0],
}
KINDS = ("AdditiveCoupling", "AffineCoupling")
# A change smaller than this is "no change": far above float64 finite-difference noise (~1e-9)
# and far below what random parameters (std 0.3) produce (~1e-1).
MOVED = 1e-6


@pytest.fixture(params=[(k, m) for k in KINDS for m in MASKS], ids=lambda p: f"{p[0]}-{p[1]}")
def layer(request, coupling, randomize, dtype, device):
    """``(layer, name, mask)``: a randomized coupling layer of each kind and mask."""
    kind, mask_name = request.param
    mask = torch.tensor(MASKS[mask_name], dtype=dtype, device=device)
    flow = getattr(coupling, kind)(mask, hidden_features=16, num_hidden=2)
    flow = randomize(flow.to(device=device, dtype=dtype))
    return flow, f"{kind}(mask={mask_name})", mask


@pytest.fixture
def points(layer, dtype, device):
    return torch.randn(4, len(layer[2]), dtype=dtype, device=device)


def passive_redrawn(x: torch.Tensor, mask: torch.Tensor, seed: int = 11) -> torch.Tensor:
    """``x`` with its passive entries (``mask = 1``) drawn anew and its active ones kept."""
    fresh = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed))
    kept = mask.bool().cpu()
    out = x.clone()
    out[:, kept] = fresh[:, kept].to(x.device)
    return out


def expect_coupled(flow, name: str, mask: torch.Tensor, x: torch.Tensor) -> None:
    """The layer is a coupling transform, not a fixed map: its active outputs follow the passive
    inputs. The identity, a constant, a fixed shift or scale all fail here, so the checks after
    this one say something about the student's layer."""
    n, d = x.shape
    active = ~mask.bool().cpu()
    moved = passive_redrawn(x, mask)
    out, _ = expect_pair(flow.forward(torch.cat([x, moved])), f"{name}.forward", 2 * n, d)
    change = max_error(out[:n, active], out[n:, active])
    assert change > MOVED, (
        f"{name}.forward with random parameters should shift (and scale) the entries where "
        "mask = 0 by amounts computed from the entries where mask = 1; changing only the "
        f"mask = 1 entries changed them by {change:.3g}, so the layer is not a coupling "
        "transform and this check cannot credit it"
    )


def output_of(method, label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> method(v)[0]``, checked, for :func:`jacobians`."""
    return lambda v: expect_pair(method(v), label, *v.shape)[0]


@pytest.mark.weight(2)
def test_invertible(layer, points, check):
    """A coupling layer's inverse undoes its forward, and the other way round"""
    flow, name, mask = layer
    expect_coupled(flow, name, mask, points)
    check.invertible(flow, points, name)


@pytest.mark.weight(2)
def test_log_det_matches_jacobian(layer, points, check):
    """log|det J| of a coupling layer equals that of its Jacobian, per sample"""
    flow, name, mask = layer
    expect_coupled(flow, name, mask, points)
    check.log_det_matches_jacobian(flow, points, name)


def test_log_dets_negate(layer, points, check):
    """A coupling layer's forward and inverse log-determinants are opposite"""
    flow, name, mask = layer
    expect_coupled(flow, name, mask, points)
    check.log_dets_negate(flow, points, name)


def test_batch_independent(layer, points, check):
    """A coupling layer transforms each sample on its own"""
    flow, name, mask = layer
    expect_coupled(flow, name, mask, points)
    check.batch_independent(flow, points, name)


def test_masked_half_passes_through(layer, points):
    """The entries with mask = 1 pass through unchanged, both ways"""
    flow, name, mask = layer
    kept = mask.bool().cpu()
    for direction in ("forward", "inverse"):
        out, _ = expect_pair(getattr(flow, direction)(points), f"{name}.{direction}", *points.shape)
        assert torch.equal(out[:, kept], points[:, kept]), (
            f"{name}.{direction}: the entries where mask = 1 should be copied unchanged; "
            f"input {points[0, kept].tolist()} came out as {out[0, kept].tolist()}"
        )
        changed = max_error(out[:, ~kept], points[:, ~kept])
        assert changed > 0, (
            f"{name}.{direction} with random parameters should change the entries where "
            "mask = 0, but returned them unchanged"
        )
    expect_coupled(flow, name, mask, points)


@pytest.mark.weight(2)
def test_jacobian_is_a_coupling(layer, points, jacobian_tol):
    """The Jacobian (finite differences) is a coupling's: the active entries depend on the
    passive ones and each on itself only, with slope exp(s(passive)) (affine) or 1 (additive)"""
    flow, name, mask = layer
    n = points.shape[0]
    kept = mask.bool().cpu()
    active = ~kept
    # Same active entries, new passive ones: an affine layer's slopes must change with them.
    x = torch.cat([points, passive_redrawn(points, mask)])
    for direction in ("forward", "inverse"):
        label = f"{name}.{direction}"
        J = jacobians(output_of(getattr(flow, direction), label), x)  # (2n, out, in)
        from_passive = J[:, active][:, :, kept]
        assert float(from_passive.abs().max()) > MOVED, (
            f"{label}: with random parameters the entries where mask = 0 should depend on the "
            "entries where mask = 1 (through the network); their Jacobian block is "
            f"{float(from_passive.abs().max()):.3g} everywhere"
        )
        within = J[:, active][:, :, active]
        slopes = torch.diagonal(within, dim1=1, dim2=2)
        crossed = float((within - torch.diag_embed(slopes)).abs().max())
        assert crossed < jacobian_tol, (
            f"{label}: each entry where mask = 0 should depend on itself and the mask = 1 "
            f"entries only, not on the other mask = 0 entries; that Jacobian block has "
            f"off-diagonal entries up to {crossed:.3g} (finite differences)"
        )
        if name.startswith("AdditiveCoupling"):
            off_one = float((slopes - 1).abs().max())
            assert off_one < jacobian_tol, (
                f"{label} only shifts the entries where mask = 0, so d out_i / d in_i should "
                f"be 1 there; it is {slopes[0].tolist()} for sample 0"
            )
        else:
            varied = max_error(slopes[:n], slopes[n:])
            assert varied > MOVED, (
                f"{label} should scale each entry where mask = 0 by exp(s) with s computed from "
                "the entries where mask = 1; changing those left the scales "
                f"{slopes[0].tolist()} (sample 0) as they were"
            )


def test_additive_is_volume_preserving(coupling, randomize, dtype, device):
    """NICE's additive coupling has log|det J| = 0"""
    mask = torch.tensor([0, 1, 1, 0], dtype=dtype, device=device)
    flow = randomize(coupling.AdditiveCoupling(mask, 16, 2).to(device=device, dtype=dtype))
    z = torch.randn(5, 4, dtype=dtype, device=device)
    name = "AdditiveCoupling(mask=[0, 1, 1, 0])"
    expect_coupled(flow, name, mask, z)
    for direction in ("forward", "inverse"):
        _, log_abs_det = expect_pair(getattr(flow, direction)(z), f"{name}.{direction}", 5, 4)
        assert torch.count_nonzero(log_abs_det) == 0, (
            f"AdditiveCoupling.{direction} only shifts, so log|det J| should be 0 for every "
            f"sample; got {log_abs_det.tolist()}"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_log_det_is_linear_time(coupling, randomize, kind, check):
    """A coupling layer with 4096 features is fast and computes no determinant"""
    features = 4096
    mask = (torch.arange(features) % 2).float()
    flow = randomize(getattr(coupling, kind)(mask, hidden_features=8, num_hidden=1))
    z = torch.randn(16, features)
    name = f"{kind} with {features} features"
    expect_coupled(flow, name, mask, z)
    check.cheap(flow, z, name)


@pytest.mark.weight(2)
def test_gradients_flow(coupling, randomize, probes):
    """Training needs gradients: autograd's gradients of a coupling layer's outputs and
    log-determinants (w.r.t. its parameters and its input) match finite differences"""
    for kind in KINDS:
        mask = torch.tensor([0, 1, 1, 0], dtype=torch.float64)
        flow = randomize(getattr(coupling, kind)(mask, hidden_features=8, num_hidden=2).double())
        x = torch.randn(6, 4, dtype=torch.float64)
        expect_coupled(flow, f"{kind}(mask=[0, 1, 1, 0])", mask, x)
        for direction in ("forward", "inverse"):
            what = f"{kind}(mask=[0, 1, 1, 0]).{direction}"
            for output, of in ((0, "the output"), (1, "log|det J|")):
                method = getattr(flow, direction)
                expect_gradients(probes, method, flow, (x,), what, of, output)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_layer_is_finite(coupling, randomize, kind):
    """A freshly built coupling layer (whatever its initial parameters) maps finite points to
    finite points with finite log-determinants, both ways"""
    mask = torch.tensor([1, 0, 1], dtype=torch.float64)
    flow = getattr(coupling, kind)(mask, hidden_features=8, num_hidden=1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    for direction in ("forward", "inverse"):
        name = f"a fresh {kind}(mask=[1, 0, 1]).{direction}"
        out, log_det = expect_pair(getattr(flow, direction)(x), name, 5, 3)
        bad = int((~torch.isfinite(out)).sum() + (~torch.isfinite(log_det)).sum())
        assert bad == 0, (
            f"{name} should give finite outputs and log|det J| for finite inputs; got "
            f"{bad} inf/nan value(s), e.g. output {out[0].tolist()}, log|det J| "
            f"{float(log_det[0])} for sample 0"
        )
    # Only a coupling layer earns this test: the identity is finite too.
    expect_coupled(randomize(flow), f"{kind}(mask=[1, 0, 1])", mask, x)
