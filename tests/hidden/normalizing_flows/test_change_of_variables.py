"""Hidden tests of ``flows/change_of_variables.py``: ``log_prob``, ``sample`` and ``Affine``.

``log p_X(x) = log p_Z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|``; the anchors are 1-D maps whose
density is known by hand, then 2-D matrices that defeat the usual shortcuts.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LogNormal, MultivariateNormal, Uniform

from flows.base import Flow, standard_normal


def uniform01(dim: int) -> Distribution:
    """``U(0, 1)^dim`` whose ``log_prob`` is ``-inf`` outside the cube instead of raising."""
    low, high = torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    return Independent(Uniform(low, high, validate_args=False), 1, validate_args=False)


class Exp(Flow):
    """``x = exp(z)``: ``log|det J_f(z)| = sum z``, ``log|det J_{f^{-1}}(x)| = -sum log x``."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.exp(), z.sum(-1)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.log(), -x.log().sum(-1)


class CountingShift(Flow):
    """``x = z + 5``, counting how often each direction runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"forward": 0, "inverse": 0}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.calls["forward"] += 1
        return z + 5.0, z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls["inverse"] += 1
        return x - 5.0, x.new_zeros(x.shape[0])


def fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values.flatten().tolist()) + "]"


def affine(change_of_variables, A: list[list[float]], b: list[float]) -> Flow:
    A_, b_ = torch.tensor(A, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return change_of_variables.Affine(A_, b_).double()


# (name, A, b, the uniform's image [lo, hi], its density)
ANCHORS = [
    ("x = 3z + 1", [[3.0]], [1.0], (1.0, 4.0), 1 / 3),
    ("x = 2z", [[2.0]], [0.0], (0.0, 2.0), 1 / 2),
    ("x = -2z + 1", [[-2.0]], [1.0], (-1.0, 1.0), 1 / 2),
]


@pytest.mark.weight(2)
@pytest.mark.parametrize(
    ("name", "A", "b", "support", "density"), ANCHORS, ids=[a[0] for a in ANCHORS]
)
def test_uniform_anchors(change_of_variables, name, A, b, support, density):
    """The density of an affine map of U(0, 1) is 1/|a| on the image and 0 outside it"""
    flow = affine(change_of_variables, A, b)
    lo, hi = support
    inside = torch.tensor([[lo + 0.1 * (hi - lo)], [lo + 0.5 * (hi - lo)], [hi - 0.05 * (hi - lo)]])
    got = change_of_variables.log_prob(flow, uniform01(1), inside.double())
    expected = math.log(density)
    assert got.shape == (3,), f"log_prob of 3 points should have shape (3,), got {tuple(got.shape)}"
    assert torch.allclose(got, torch.full_like(got, expected), atol=1e-6), (
        f"log p_X(x) for {name}, z ~ U(0, 1), at x = {fmt(inside)}: expected "
        f"log({density:.4g}) = {expected:.4f} everywhere on [{lo:g}, {hi:g}], got {fmt(got)}"
    )
    outside = torch.tensor([[lo - 0.5], [hi + 0.5]], dtype=torch.float64)
    got = change_of_variables.log_prob(flow, uniform01(1), outside)
    assert torch.all(got == -math.inf), (
        f"log p_X(x) for {name}, z ~ U(0, 1), at x = {fmt(outside)} (outside [{lo:g}, {hi:g}]): "
        f"expected -inf (density 0), got {fmt(got)}"
    )


def test_gaussian_anchor(change_of_variables):
    """x = 3z + 1 with z ~ N(0, 1): log p_X(2) = log N(1/3; 0, 1) - log 3"""
    flow = affine(change_of_variables, [[3.0]], [1.0])
    x = torch.tensor([[2.0], [-0.5]], dtype=torch.float64)
    got = change_of_variables.log_prob(flow, standard_normal(1, dtype=torch.float64), x)
    z = (x - 1) / 3
    expected = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).squeeze(-1) - math.log(3)
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = 3z + 1, z ~ N(0, 1) at x = {fmt(x)}: expected "
        f"log N(z = (x - 1)/3) - log 3 = {fmt(expected)}, got {fmt(got)}"
    )


def test_exp_of_normal_is_lognormal(change_of_variables):
    """x = exp(z), z ~ N(0, 1) has the log-normal density (the derivative taken the right way)"""
    x = torch.tensor([[0.2], [1.0], [3.0]], dtype=torch.float64)
    got = change_of_variables.log_prob(Exp(), standard_normal(1, dtype=torch.float64), x)
    expected = LogNormal(0.0, 1.0).log_prob(x.squeeze(-1))
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = exp(z), z ~ N(0, 1) at x = {fmt(x)}: expected the log-normal "
        f"log N(log x) - log x = {fmt(expected)}, got {fmt(got)} (a difference of 2 log x means "
        "the log-determinant of the wrong direction was added)"
    )


# 2-D matrices: a shear (diagonal 1, det 1), a reflection (det < 0), a full rotation-scale.
MATRICES = {
    "shear [[1, 0], [1.5, 1]]": [[1.0, 0.0], [1.5, 1.0]],
    "det < 0 [[1, 2], [3, 1]]": [[1.0, 2.0], [3.0, 1.0]],
    "2 x rotation by 30 deg": [
        [2 * math.cos(math.pi / 6), -2 * math.sin(math.pi / 6)],
        [2 * math.sin(math.pi / 6), 2 * math.cos(math.pi / 6)],
    ],
    "upper shear [[0.5, -2], [0, 3]]": [[0.5, -2.0], [0.0, 3.0]],
}
SHIFT = [0.5, -1.0]


@pytest.fixture(params=list(MATRICES), ids=list(MATRICES))
def matrix(request) -> tuple[str, Tensor]:
    return request.param, torch.tensor(MATRICES[request.param], dtype=torch.float64)


def test_affine_forward_and_inverse(change_of_variables, matrix):
    """Affine maps z to A z + b and back"""
    name, A = matrix
    flow = affine(change_of_variables, A.tolist(), SHIFT)
    z = torch.randn(5, 2, dtype=torch.float64)
    x, _ = flow(z)
    expected = z @ A.T + torch.tensor(SHIFT, dtype=torch.float64)
    assert torch.allclose(x, expected, atol=1e-10), (
        f"Affine with A = {name}: forward(z) should be A z + b (z @ A.T + b for rows); "
        f"for z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )
    back, _ = flow.inverse(x)
    assert torch.allclose(back, z, atol=1e-10), (
        f"Affine with A = {name}: inverse(forward(z)) should give z = {fmt(z[0])}, "
        f"got {fmt(back[0])}"
    )


def test_affine_log_abs_det(change_of_variables, matrix):
    """Affine's log-determinants are +-log|det A|, one per sample"""
    name, A = matrix
    flow = affine(change_of_variables, A.tolist(), SHIFT)
    expected = math.log(abs(float(torch.linalg.det(A))))
    x = torch.randn(4, 2, dtype=torch.float64)
    for direction, sign in (("forward", 1.0), ("inverse", -1.0)):
        _, log_abs_det = getattr(flow, direction)(x)
        assert tuple(log_abs_det.shape) == (4,), (
            f"Affine.{direction} on a batch of 4 should return 4 log-determinants (shape (4,)), "
            f"got shape {tuple(log_abs_det.shape)}"
        )
        want = torch.full((4,), sign * expected, dtype=torch.float64)
        assert torch.allclose(log_abs_det, want, atol=1e-8), (
            f"Affine with A = {name} (det A = {float(torch.linalg.det(A)):.4g}): {direction} "
            "should "
            f"return {'' if sign > 0 else '-'}log|det A| = {sign * expected:.4f} for every sample, "
            f"got {fmt(log_abs_det)}"
        )


def test_affine_log_prob_is_gaussian(change_of_variables, matrix):
    """A z + b with z ~ N(0, I) has the density N(b, A A^T)"""
    name, A = matrix
    flow = affine(change_of_variables, A.tolist(), SHIFT)
    b = torch.tensor(SHIFT, dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64) * 2
    got = change_of_variables.log_prob(flow, standard_normal(2, dtype=torch.float64), x)
    expected = MultivariateNormal(b, A @ A.T).log_prob(x)
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = A z + b, A = {name}, z ~ N(0, I): expected the Gaussian N(b, A A^T) "
        f"density {fmt(expected)}, got {fmt(got)}"
    )


def test_density_integrates_to_one(change_of_variables):
    """The density of a 2-D affine flow integrates to 1 (grid quadrature)"""
    A = [[1.2, 0.9], [-0.6, 1.5]]  # det 2.34: a wrong log-determinant changes the mass
    flow = affine(change_of_variables, A, SHIFT)
    n, half = 321, 8.0
    grid = torch.linspace(-half, half, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid + SHIFT[0], grid + SHIFT[1], indexing="xy")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=-1)
    log_p = change_of_variables.log_prob(flow, standard_normal(2, dtype=torch.float64), points)
    mass = float(log_p.detach().exp().sum()) * (2 * half / (n - 1)) ** 2
    assert abs(mass - 1.0) < 1e-3, (
        f"the integral of p_X over the plane for x = A z + b (det A = 2.34) should be 1, "
        f"got {mass:.4f}"
    )


def test_sample_shape_and_one_forward_pass(change_of_variables):
    """sample(flow, base, n) returns (n, d) points from one forward pass"""
    flow = CountingShift()
    x = change_of_variables.sample(flow, standard_normal(3), 500)
    assert isinstance(x, Tensor) and tuple(x.shape) == (500, 3), (
        f"sample(flow, base, 500) in 3-D should return one tensor of shape (500, 3), got "
        f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
    )
    assert flow.calls == {"forward": 1, "inverse": 0}, (
        f"sample should draw all n base points at once and push them through flow.forward once "
        f"(never the inverse); it called forward {flow.calls['forward']} and inverse "
        f"{flow.calls['inverse']} times"
    )
    mean = x.mean(0)
    assert torch.allclose(mean, torch.full((3,), 5.0), atol=0.3), (
        f"samples of x = z + 5, z ~ N(0, I) should average about 5 in each coordinate, "
        f"got {fmt(mean)}"
    )


def test_sample_follows_the_flow(change_of_variables):
    """Samples of A z + b have mean b and covariance A A^T"""
    A = torch.tensor([[1.0, 0.0], [1.5, 0.5]], dtype=torch.float64)
    flow = affine(change_of_variables, A.tolist(), SHIFT)
    x = change_of_variables.sample(flow, standard_normal(2, dtype=torch.float64), 20000).detach()
    mean, cov = x.mean(0), torch.cov(x.T)
    expected = A @ A.T
    ok_mean = torch.allclose(mean, torch.tensor(SHIFT, dtype=torch.float64), atol=0.05)
    assert ok_mean and torch.allclose(cov, expected, atol=0.1), (
        f"20000 samples of x = A z + b should have mean b = {fmt(torch.tensor(SHIFT))} and "
        f"covariance A A^T = {fmt(expected)}; got mean {fmt(mean)} and covariance {fmt(cov)}"
    )
