"""Self-checks for flows/maf.py: MADE's autoregressive masks and MAF's two directions."""

import torch
from torch.autograd.functional import jacobian

from flows.maf import MADE, MAF, MaskedLinear


def test_masked_linear_uses_only_allowed_connections(perturb):
    """Output i of MaskedLinear ignores input j wherever mask[i, j] = 0."""
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    layer = perturb(MaskedLinear(3, 2, mask).double())
    J = jacobian(layer, torch.randn(3, dtype=torch.float64))
    assert torch.equal(J != 0, mask.bool())


def test_made_is_autoregressive_in_any_order(perturb):
    """Outputs for order[k] depend only on x[order[:k]], even with fewer hidden units than d."""
    order = torch.tensor([2, 0, 4, 1, 3])
    made = perturb(MADE(5, hidden_features=4, num_hidden=2, order=order).double())
    x = torch.randn(5, dtype=torch.float64)
    J = jacobian(lambda v: torch.cat(made.forward(v[None]), dim=-1)[0], x)  # (shift|scale, x)
    rank = torch.empty(5, dtype=torch.long)
    rank[order] = torch.arange(5)
    allowed = rank[:, None] > rank[None, :]  # output i may see input j iff j comes before i
    for half in J.chunk(2, dim=0):
        assert not half[~allowed].any()
    assert J[:, order[0]].any()  # the first variable in the order conditions the others


def test_maf_sampling_inverts_density_pass(perturb):
    """forward (d passes) and inverse (one pass) are inverses; log-dets match the Jacobian."""
    flow = perturb(MAF(3, hidden_features=8, num_hidden=1).double(), std=0.3)
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
    assert torch.allclose(z_back, z)
    assert torch.allclose(inverse_logdet, -logdet)
    J = jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
    assert torch.allclose(inverse_logdet[0], torch.linalg.slogdet(J).logabsdet)
