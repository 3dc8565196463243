"""Self-checks for flows/iaf.py: one MADE pass to sample, d passes for the density."""

import torch
from torch.autograd.functional import jacobian

from flows.iaf import IAF
from flows.maf import MAF

DOUBLE = {"dtype": torch.float64}


def count_made_calls(flow: torch.nn.Module) -> list[int]:
    """Count calls of ``flow.made`` however they are made (``made(x)`` or ``made.forward(x)``)."""
    calls = [0]
    original = flow.made.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    flow.made.forward = counted  # an instance attribute: nn.Module.__call__ finds it too
    return calls


def random_iaf(perturb, features: int = 3) -> IAF:
    return perturb(IAF(features, hidden_features=8, num_hidden=1).double(), std=0.3)


def test_iaf_samples_in_one_made_pass(perturb):
    """IAF.forward calls its MADE once, whatever the number of features."""
    flow = random_iaf(perturb, features=5)
    calls = count_made_calls(flow)
    z = torch.randn(4, 5, **DOUBLE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, _ = flow.forward(z)
    assert calls[0] == 1, (
        "IAF(5).forward should call its MADE once: x = z * exp(s(z)) + t(z) needs only z, which "
        f"is all known; it called it {calls[0]} times"
    )
    shift, log_scale = flow.made(z)
    expected = z * torch.exp(log_scale) + shift
    assert torch.allclose(x, expected), (
        "IAF.forward should be x = z * exp(log_scale) + shift with (shift, log_scale) = made(z); "
        f"for z[0] expected {expected[0].tolist()}, got {x[0].tolist()}"
    )


def test_iaf_density_pass_inverts_sampling(perturb):
    """inverse (d passes) undoes forward (one pass); log-dets are opposite and match autograd."""
    flow = random_iaf(perturb)
    z = torch.randn(4, 3, **DOUBLE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
    error = float((z_back - z).abs().max())
    assert error < 1e-8, (
        "IAF(3).inverse(IAF(3).forward(z)) should give back z: the density pass recovers one "
        f"base variable per MADE pass, in order; the largest difference is {error:.3g}"
    )
    assert torch.allclose(inverse_logdet, -logdet), (
        "IAF's log|det J_{f^{-1}}(x)| should be minus log|det J_f(z)| at x = f(z): got "
        f"{inverse_logdet[0].item():.4f} and {logdet[0].item():.4f} for sample 0"
    )
    J = jacobian(lambda v: flow.forward(v[None])[0][0], z[0])
    expected = torch.linalg.slogdet(J).logabsdet
    assert torch.allclose(logdet[0], expected), (
        "IAF.forward's log|det J_f(z)| should be sum(log_scale), the log|det| of its triangular "
        f"Jacobian: autograd says {expected.item():.4f}, got {logdet[0].item():.4f}"
    )


def test_iaf_mirrors_maf_on_the_same_made(perturb):
    """On the same MADE, IAF.forward(u) and MAF.inverse(u) have opposite log-dets."""
    iaf = random_iaf(perturb)
    maf = MAF(3, hidden_features=8, num_hidden=1).double()
    maf.made.load_state_dict(iaf.made.state_dict())
    u = torch.randn(4, 3, **DOUBLE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, iaf_logdet = iaf.forward(u)
        _, maf_logdet = maf.inverse(u)
    assert torch.allclose(iaf_logdet, -maf_logdet), (
        "with the same MADE weights, IAF.forward(u) applies the affine map (t, s) = made(u) that "
        "MAF.inverse(u) undoes: their log-dets should be sum(s) and -sum(s); got "
        f"{iaf_logdet[0].item():.4f} and {maf_logdet[0].item():.4f} for sample 0"
    )


def test_iaf_sampling_needs_no_determinant(assert_cheap_log_det):
    """IAF's sampling pass with 2048 features computes no determinant and no Jacobian."""
    features = 2048
    flow = IAF(features, hidden_features=16, num_hidden=1)
    z = torch.randn(4, features, generator=torch.Generator().manual_seed(0))
    _, log_abs_det = assert_cheap_log_det(flow, "forward", z, f"IAF({features})")
    assert tuple(log_abs_det.shape) == (4,), (
        f"IAF({features}).forward on 4 samples should return one log|det J| per sample, "
        f"shape (4,); got shape {tuple(log_abs_det.shape)}"
    )
