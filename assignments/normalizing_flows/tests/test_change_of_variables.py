"""Self-checks for flows/change_of_variables.py: the lesson's uniform examples and Affine."""

import torch
from torch.distributions import Independent, MultivariateNormal, Uniform

from flows.base import standard_normal
from flows.change_of_variables import Affine, log_prob, sample


def uniform(dim: int) -> Independent:
    # validate_args=False: log_prob is -inf outside [0, 1)^dim instead of an error.
    zeros = torch.zeros(dim, dtype=torch.float64)
    return Independent(Uniform(zeros, zeros + 1, validate_args=False), 1)


def test_uniform_1d_stretched_by_3():
    """Z ~ Uniform(0, 1), x = 3z + 1: density 1/3 on [1, 4], 0 outside, integrates to 1."""
    flow = Affine(
        torch.tensor([[3.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    )
    step = 1e-3
    x = torch.arange(-1 + step / 2, 6, step, dtype=torch.float64)  # midpoints, none on an edge
    with torch.no_grad():
        density = log_prob(flow, uniform(1), x[:, None]).exp()
    inside = (x > 1) & (x < 4)
    assert torch.allclose(density[inside], torch.tensor(1 / 3, dtype=torch.float64)), (
        "x = 3z + 1 stretches [0, 1] three times onto [1, 4], so the density there is 1/3; got "
        f"values from {density[inside].min().item():.4f} to {density[inside].max().item():.4f}"
    )
    outside = x[~inside][density[~inside] != 0]
    assert len(outside) == 0, (
        f"outside [1, 4] the density should be 0, but it is not at x = {outside[0].item():.4f}"
    )
    area = density.sum().item() * step
    assert abs(area - 1) < 1e-3, f"the density of X should integrate to 1, got {area:.4f}"


def test_uniform_square_stretched_along_x():
    """Z ~ Uniform([0,1]^2), A = [[2,0],[0,1]]: density 1/2 on [0,2]x[0,1], 0 outside, mass 1."""
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    flow = Affine(A, torch.zeros(2, dtype=torch.float64))
    step = 0.01
    axis = torch.arange(-1 + step / 2, 3, step, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = log_prob(flow, uniform(2), x).exp()
    inside = (x[:, 0] > 0) & (x[:, 0] < 2) & (x[:, 1] > 0) & (x[:, 1] < 1)
    assert torch.allclose(density[inside], torch.tensor(0.5, dtype=torch.float64)), (
        "A = [[2, 0], [0, 1]] doubles areas, so the density on [0, 2] x [0, 1] is 1/|det A| = "
        f"1/2; got values from {density[inside].min().item():.4f} to "
        f"{density[inside].max().item():.4f}"
    )
    outside = x[~inside][density[~inside] != 0]
    assert len(outside) == 0, (
        "outside [0, 2] x [0, 1] the density should be 0, but it is not at x = "
        f"{outside[0].tolist()}"
    )
    area = density.sum().item() * step**2
    assert abs(area - 1) < 1e-3, f"the density of X should integrate to 1, got {area:.4f}"


def test_affine_gaussian_with_negative_determinant():
    """N(0, I) pushed through x = Az + b (det A < 0) is N(b, A A^T); inverse undoes forward."""
    A = torch.tensor([[0.0, 2.0], [1.0, 0.5]], dtype=torch.float64)  # det A = -2
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    flow = Affine(A, b)
    z = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, forward_logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
        log_p = log_prob(flow, standard_normal(2, dtype=torch.float64), x)
    error = float((z_back - z).abs().max())
    assert error < 1e-10, (
        f"Affine.inverse should undo x = z @ A.T + b; the largest difference is {error:.3g}"
    )
    shapes = (tuple(forward_logdet.shape), tuple(inverse_logdet.shape))
    assert shapes == ((16,), (16,)), (
        "forward and inverse on 16 samples should each return one log|det J| per sample, "
        f"shape (16,); got {shapes}"
    )
    log_2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(forward_logdet, log_2.expand(16)), (
        "det A = -2, so log|det J_f| = log|det A| = log 2 = 0.6931 for every sample (the "
        f"absolute value: a reflection still has a density); got {forward_logdet[0].item():.4f}"
    )
    assert torch.allclose(inverse_logdet, -forward_logdet), (
        "log|det J_{f^{-1}}| should be -log|det A| = -0.6931; got "
        f"{inverse_logdet[0].item():.4f}"
    )
    expected = MultivariateNormal(b, A @ A.T).log_prob(x)
    assert torch.allclose(log_p, expected), (
        "N(0, I) pushed through x = Az + b is N(b, A A^T): log_prob of sample 0 should be "
        f"{expected[0].item():.4f}, got {log_p[0].item():.4f}"
    )


def test_sample_is_one_forward_pass():
    """sample(flow, base, n) has shape (n, d) and follows the pushed-forward distribution."""
    flow = Affine(
        torch.eye(2, dtype=torch.float64) * 0.1, torch.tensor([5.0, -5.0], dtype=torch.float64)
    )
    torch.manual_seed(0)
    with torch.no_grad():
        x = sample(flow, standard_normal(2, dtype=torch.float64), 1000)
    assert tuple(x.shape) == (1000, 2), (
        "sample(flow, base, 1000) in 2 dimensions should have shape (1000, 2), got "
        f"{tuple(x.shape)}"
    )
    mean, std = x.mean(0), x.std(0)
    assert torch.allclose(mean, flow.b, atol=0.02), (
        "samples of x = 0.1 z + (5, -5) should have mean (5, -5), pushed through flow.forward; "
        f"got {mean.tolist()}"
    )
    assert torch.allclose(std, torch.full((2,), 0.1, dtype=torch.float64), atol=0.01), (
        f"samples of x = 0.1 z + (5, -5) should have standard deviation 0.1, got {std.tolist()}"
    )
