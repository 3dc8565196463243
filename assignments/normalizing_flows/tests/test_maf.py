"""Self-checks for flows/maf.py: MADE's autoregressive masks and MAF's two directions."""

import torch
from torch.autograd.functional import jacobian

from flows.maf import MADE, MAF, MaskedLinear

DOUBLE = {"dtype": torch.float64}


def positive_network(module: torch.nn.Module) -> torch.nn.Module:
    """Every trainable parameter drawn from U(0.1, 0.3), in float64, under a fixed seed.

    With positive weights and biases and a positive input, every ReLU unit is active, so every
    path of connections from an input to an output adds a positive term to that derivative and
    none can cancel: a connection the masks allow shows up in the Jacobian, and so does a leak.
    (With random signs, a random input switches off every unit of a small layer now and then,
    and a leak can hide.)
    """
    module = module.double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                draw = torch.rand(parameter.shape, generator=generator, **DOUBLE)
                parameter.copy_(0.1 + 0.2 * draw)
    return module


def test_masked_linear_uses_only_allowed_connections(perturb):
    """Output i of MaskedLinear ignores input j wherever mask[i, j] = 0, and uses it elsewhere."""
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    layer = perturb(MaskedLinear(3, 2, mask).double())
    x = torch.randn(3, **DOUBLE, generator=torch.Generator().manual_seed(0))
    J = jacobian(layer, x)  # (outputs, inputs): dy_i / dx_j
    used = (J != 0).int()
    assert torch.equal(used, mask.int()), (
        "MaskedLinear(3, 2, mask=[[1, 0, 0], [1, 1, 0]]) should connect input j to output i "
        f"exactly where mask[i, j] = 1 (y = x @ (W * mask).T + b); the connections it has are "
        f"{used.tolist()}"
    )


def test_made_is_autoregressive_in_any_order():
    """Outputs for order[k] depend only on x[order[:k]], even with fewer hidden units than d."""
    order = torch.tensor([2, 0, 4, 1, 3])
    made = positive_network(MADE(5, hidden_features=4, num_hidden=2, order=order))
    x = 0.5 + torch.rand(5, **DOUBLE, generator=torch.Generator().manual_seed(0))  # all > 0
    shift_J, log_scale_J = jacobian(lambda v: tuple(out[0] for out in made(v[None])), x)
    rank = torch.empty(5, dtype=torch.long)
    rank[order] = torch.arange(5)
    allowed = rank[:, None] > rank[None, :]  # output i may see input j iff j comes before i
    name = f"MADE(5 features, hidden_features=4, order={order.tolist()})"
    for what, J in (("shift", shift_J), ("log-scale", log_scale_J)):
        leaks = ((J != 0) & ~allowed).nonzero().tolist()
        assert not leaks, (
            f"{name}: the {what} of variable {leaks[0][0]} depends on x[{leaks[0][1]}], which "
            f"does not come before it in the order ({len(leaks)} forbidden dependencies in all). "
            "Check the degrees: output k may only see hidden units of degree < k."
        )
    first = int(order[0])
    assert (shift_J[:, first] != 0).any() or (log_scale_J[:, first] != 0).any(), (
        f"{name}: x[{first}] comes first in the order, so the later variables should be "
        "conditioned on it, but no output depends on it (with every unit active, as here). "
        "Check that hidden units of degree 0 exist and connect onward."
    )


def test_maf_sampling_inverts_density_pass(perturb):
    """forward (d passes) and inverse (one pass) are inverses; log-dets match the Jacobian."""
    flow = perturb(MAF(3, hidden_features=8, num_hidden=1).double(), std=0.3)
    z = torch.randn(4, 3, **DOUBLE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
    error = float((z_back - z).abs().max())
    assert error < 1e-8, (
        "MAF(3).inverse(MAF(3).forward(z)) should give back z: sampling fixes one variable per "
        f"MADE pass, in order; the largest difference is {error:.3g}"
    )
    assert torch.allclose(inverse_logdet, -logdet), (
        "MAF's log|det J_{f^{-1}}(x)| should be minus log|det J_f(z)| at x = f(z): got "
        f"{inverse_logdet[0].item():.4f} and {logdet[0].item():.4f} for sample 0"
    )
    J = jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
    expected = torch.linalg.slogdet(J).logabsdet
    assert torch.allclose(inverse_logdet[0], expected), (
        "MAF.inverse's log|det J_{f^{-1}}(x)| should be -sum(log_scale), the log|det| of its "
        f"triangular Jacobian: autograd says {expected.item():.4f}, got "
        f"{inverse_logdet[0].item():.4f}"
    )


def test_maf_density_needs_no_determinant(assert_cheap_log_det):
    """MAF's density pass with 2048 features computes no determinant and no Jacobian."""
    features = 2048
    flow = MAF(features, hidden_features=16, num_hidden=1)
    x = torch.randn(4, features, generator=torch.Generator().manual_seed(0))
    _, log_abs_det = assert_cheap_log_det(flow, "inverse", x, f"MAF({features})")
    assert tuple(log_abs_det.shape) == (4,), (
        f"MAF({features}).inverse on 4 samples should return one log|det J| per sample, "
        f"shape (4,); got shape {tuple(log_abs_det.shape)}"
    )
