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
    assert torch.allclose(density[inside], torch.tensor(1 / 3, dtype=torch.float64))
    assert (density[~inside] == 0).all()
    assert abs(density.sum().item() * step - 1) < 1e-3


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
    assert torch.allclose(density[inside], torch.tensor(0.5, dtype=torch.float64))
    assert (density[~inside] == 0).all()
    assert abs(density.sum().item() * step**2 - 1) < 1e-3


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
    assert torch.allclose(z_back, z)
    assert forward_logdet.shape == inverse_logdet.shape == (16,)
    assert torch.allclose(
        forward_logdet, torch.full_like(forward_logdet, torch.log(torch.tensor(2.0)))
    )
    assert torch.allclose(inverse_logdet, -forward_logdet)
    assert torch.allclose(log_p, MultivariateNormal(b, A @ A.T).log_prob(x))


def test_sample_is_one_forward_pass():
    """sample(flow, base, n) has shape (n, d) and follows the pushed-forward distribution."""
    flow = Affine(
        torch.eye(2, dtype=torch.float64) * 0.1, torch.tensor([5.0, -5.0], dtype=torch.float64)
    )
    torch.manual_seed(0)
    with torch.no_grad():
        x = sample(flow, standard_normal(2, dtype=torch.float64), 1000)
    assert x.shape == (1000, 2)
    assert torch.allclose(x.mean(0), flow.b, atol=0.02)
    assert torch.allclose(x.std(0), torch.full((2,), 0.1, dtype=torch.float64), atol=0.01)
