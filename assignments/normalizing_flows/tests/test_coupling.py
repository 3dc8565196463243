"""Self-checks for flows/coupling.py: exact inverses, fixed entries, O(d) log-determinants."""

import pytest
import torch
from torch.autograd.functional import jacobian

from flows.coupling import AdditiveCoupling, AffineCoupling

MASK = torch.tensor([1.0, 0.0, 1.0, 0.0])


@pytest.fixture(params=[AdditiveCoupling, AffineCoupling])
def layer(request, perturb):
    return perturb(request.param(MASK, hidden_features=8, num_hidden=1).double())


@pytest.fixture
def z():
    return torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_fresh_layer_is_identity(z):
    """A fresh AffineCoupling is the identity (zero-initialized last layer)."""
    x, logdet = AffineCoupling(MASK).double().forward(z)
    assert torch.allclose(x, z)
    assert torch.allclose(logdet, torch.zeros(5, dtype=torch.float64))


def test_inverse_undoes_forward_and_mask_entries_pass_through(layer, z):
    """inverse(forward(z)) = z, entries with mask = 1 are unchanged, log-dets are opposite."""
    with torch.no_grad():
        x, logdet = layer.forward(z)
        z_back, inverse_logdet = layer.inverse(x)
    assert torch.equal(x[:, MASK == 1], z[:, MASK == 1])
    assert not torch.allclose(x[:, MASK == 0], z[:, MASK == 0])
    assert torch.allclose(z_back, z)
    assert logdet.shape == (5,)
    assert torch.allclose(inverse_logdet, -logdet)


def test_logdet_matches_autograd_jacobian(layer, z):
    """log|det J_f(z)| equals slogdet of the full Jacobian (computed here, not in the layer)."""
    _, logdet = layer.forward(z)
    for n in range(len(z)):
        J = jacobian(lambda v: layer.forward(v[None])[0][0], z[n])
        assert torch.allclose(logdet[n], torch.linalg.slogdet(J).logabsdet)
