"""Hidden tests of ``flows/coupling.py``: ``AdditiveCoupling`` (NICE) and ``AffineCoupling``.

Every algebraic check runs on a layer whose parameters were re-drawn at random (a fresh layer
is the identity, which hides a wrong sign), in the ``--dtype`` (float64 by default).
"""

from __future__ import annotations

import pytest
import torch

MASKS = {
    "[1, 0]": [1, 0],
    "[0, 1, 0, 1]": [0, 1, 0, 1],
    "[1, 1, 0, 0, 0]": [1, 1, 0, 0, 0],
}
KINDS = ("AdditiveCoupling", "AffineCoupling")


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


@pytest.mark.weight(2)
def test_invertible(layer, points, check):
    """A coupling layer's inverse undoes its forward, and the other way round"""
    flow, name, _ = layer
    check.invertible(flow, points, name)


@pytest.mark.weight(2)
def test_log_det_matches_autograd_jacobian(layer, points, check):
    """log|det J| of a coupling layer equals that of its autograd Jacobian, per sample"""
    flow, name, _ = layer
    check.log_det_matches_jacobian(flow, points, name)


def test_log_dets_negate(layer, points, check):
    """A coupling layer's forward and inverse log-determinants are opposite"""
    flow, name, _ = layer
    check.log_dets_negate(flow, points, name)


def test_batch_independent(layer, points, check):
    """A coupling layer transforms each sample on its own"""
    flow, name, _ = layer
    check.batch_independent(flow, points, name)


def test_masked_half_passes_through(layer, points):
    """The entries with mask = 1 pass through unchanged, both ways"""
    flow, name, mask = layer
    kept = mask.bool()
    for direction in ("forward", "inverse"):
        out, _ = getattr(flow, direction)(points)
        assert torch.equal(out[:, kept], points[:, kept]), (
            f"{name}.{direction}: the entries where mask = 1 should be copied unchanged; "
            f"input {points[0, kept].tolist()} came out as {out[0, kept].tolist()}"
        )
        changed = (out[:, ~kept] - points[:, ~kept]).abs().max()
        assert changed > 0, (
            f"{name}.{direction} with random parameters should change the entries where "
            "mask = 0, but returned them unchanged"
        )


def test_additive_is_volume_preserving(coupling, randomize, dtype, device):
    """NICE's additive coupling has log|det J| = 0"""
    mask = torch.tensor([0, 1, 1, 0], dtype=dtype, device=device)
    flow = randomize(coupling.AdditiveCoupling(mask, 16, 2).to(device=device, dtype=dtype))
    z = torch.randn(5, 4, dtype=dtype, device=device)
    for direction in ("forward", "inverse"):
        _, log_abs_det = getattr(flow, direction)(z)
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
    check.cheap(flow, z, f"{kind} with 4096 features")
