"""Self-checks for flows/coupling.py: exact inverses, fixed entries, O(d) log-determinants."""

import pytest
import torch
from torch.autograd.functional import jacobian

from flows.coupling import AdditiveCoupling, AffineCoupling

MASK = torch.tensor([1.0, 0.0, 1.0, 0.0])


@pytest.fixture(params=[AdditiveCoupling, AffineCoupling], ids=lambda kind: kind.__name__)
def layer(request, perturb):
    """``(layer, name)``: a coupling layer of each kind with random parameters, in float64."""
    kind = request.param
    flow = perturb(kind(MASK, hidden_features=8, num_hidden=1).double())
    return flow, f"{kind.__name__}(mask=[1, 0, 1, 0])"


@pytest.fixture
def z():
    return torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_fresh_layer_is_identity(z):
    """A fresh AffineCoupling is the identity (zero-initialized last layer)."""
    x, logdet = AffineCoupling(MASK).double().forward(z)
    assert torch.allclose(x, z), (
        "a freshly built AffineCoupling should be the identity, x = z (zero-initialize the "
        f"conditioner's last layer so s = t = 0); z[0] = {z[0].tolist()} became {x[0].tolist()}"
    )
    assert torch.allclose(logdet, torch.zeros(5, dtype=torch.float64)), (
        "a freshly built AffineCoupling should have log|det J_f| = 0 for every sample, got "
        f"{logdet.tolist()}"
    )


def test_inverse_undoes_forward_and_mask_entries_pass_through(layer, z):
    """inverse(forward(z)) = z, entries with mask = 1 are unchanged, log-dets are opposite."""
    flow, name = layer
    with torch.no_grad():
        x, logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
    kept = MASK == 1
    assert torch.equal(x[:, kept], z[:, kept]), (
        f"{name}.forward should copy the entries where mask = 1 unchanged: "
        f"{z[0, kept].tolist()} came out as {x[0, kept].tolist()}"
    )
    assert not torch.allclose(x[:, ~kept], z[:, ~kept]), (
        f"{name}.forward with random parameters should change the entries where mask = 0 "
        "(shifted, and scaled for RealNVP, by the conditioner's output), but left them unchanged"
    )
    error = float((z_back - z).abs().max())
    assert error < 1e-8, (
        f"{name}: inverse(forward(z)) should give back z; the largest difference is "
        f"{error:.3g}. The inverse conditions on mask * x, which equals mask * z."
    )
    assert tuple(logdet.shape) == (5,), (
        f"{name}.forward on 5 samples should return one log|det J_f| per sample, shape (5,); "
        f"got shape {tuple(logdet.shape)}"
    )
    assert torch.allclose(inverse_logdet, -logdet), (
        f"{name}: log|det J_f^{{-1}}(f(z))| should be -log|det J_f(z)|; got "
        f"{inverse_logdet[0].item():.4f} and {logdet[0].item():.4f} for sample 0"
    )


def test_logdet_matches_autograd_jacobian(layer, z):
    """log|det J_f(z)| equals slogdet of the full Jacobian (computed here, not in the layer)."""
    flow, name = layer
    _, logdet = flow.forward(z)
    for n in range(len(z)):
        J = jacobian(lambda v: flow.forward(v[None])[0][0], z[n])
        expected = torch.linalg.slogdet(J).logabsdet
        assert torch.allclose(logdet[n], expected), (
            f"{name}.forward: log|det J_f| of sample {n} should be the log|det| of the layer's "
            f"Jacobian, {expected.item():.6f} (autograd); got {logdet[n].item():.6f}. For "
            "RealNVP it is the sum of the log-scales s over the entries where mask = 0; for "
            "NICE it is 0."
        )


@pytest.mark.parametrize("kind", [AdditiveCoupling, AffineCoupling], ids=lambda k: k.__name__)
def test_wide_layer_needs_no_determinant(kind, perturb, assert_cheap_log_det):
    """With 2048 features, both directions compute no determinant and no Jacobian."""
    features = 2048
    mask = (torch.arange(features) % 2).float()
    flow = perturb(kind(mask, hidden_features=8, num_hidden=1), std=0.05)
    z = torch.randn(4, features, generator=torch.Generator().manual_seed(0))
    for direction in ("forward", "inverse"):
        _, log_abs_det = assert_cheap_log_det(flow, direction, z, f"{kind.__name__}({features})")
        assert tuple(log_abs_det.shape) == (4,), (
            f"{kind.__name__}({features}).{direction} on 4 samples should return one "
            f"log|det J| per sample, shape (4,); got shape {tuple(log_abs_det.shape)}"
        )
