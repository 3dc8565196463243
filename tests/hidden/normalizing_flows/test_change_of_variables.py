"""Hidden tests of ``flows/change_of_variables.py``: ``log_prob``, ``sample`` and ``Affine``.

``log p_X(x) = log p_Z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|``; the anchors are 1-D maps whose
density is known by hand, then 2-D matrices that defeat the usual shortcuts. The student's code
runs in the worker; the flows and bases handed to ``log_prob``/``sample`` that are not the
student's are the course's probes (``probes.Exp``, ``probes.uniform01``, ...). Every expected
value is computed here, in float64, from the numbers sent.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import expect_gradients, expect_pair, expect_tensor, fetch
from torch import Tensor
from torch.distributions import LogNormal, MultivariateNormal


def fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values.flatten().tolist()) + "]"


def affine(change_of_variables, A: list[list[float]], b: list[float]):
    """The student's ``Affine(A, b)`` in float64 (a handle)."""
    A_, b_ = torch.tensor(A, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return change_of_variables.Affine(A_, b_).double()


def log_prob_of(change_of_variables, flow, base, x: Tensor) -> Tensor:
    """The student's ``log_prob(flow, base, x)``, checked to be one number per point."""
    got = change_of_variables.log_prob(flow, base, x)
    n = x.shape[0]
    return expect_tensor(got, f"log_prob of {n} points", (n,)).double()


def normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row, computed here."""
    return -0.5 * (z.double() ** 2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


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
def test_uniform_anchors(change_of_variables, probes, name, A, b, support, density):
    """The density of an affine map of U(0, 1) is 1/|a| on the image and 0 outside it"""
    flow = affine(change_of_variables, A, b)
    lo, hi = support
    inside = torch.tensor(
        [[lo + 0.1 * (hi - lo)], [lo + 0.5 * (hi - lo)], [hi - 0.05 * (hi - lo)]],
        dtype=torch.float64,
    )
    got = log_prob_of(change_of_variables, flow, probes.uniform01(1), inside)
    expected = math.log(density)
    assert torch.allclose(got, torch.full_like(got, expected), atol=1e-6), (
        f"log p_X(x) for {name}, z ~ U(0, 1), at x = {fmt(inside)}: expected "
        f"log({density:.4g}) = {expected:.4f} everywhere on [{lo:g}, {hi:g}], got {fmt(got)}"
    )
    outside = torch.tensor([[lo - 0.5], [hi + 0.5]], dtype=torch.float64)
    got = log_prob_of(change_of_variables, flow, probes.uniform01(1), outside)
    assert torch.all(got == -math.inf), (
        f"log p_X(x) for {name}, z ~ U(0, 1), at x = {fmt(outside)} (outside [{lo:g}, {hi:g}]): "
        f"expected -inf (density 0), got {fmt(got)}"
    )


def test_unit_square_anchor(change_of_variables, probes):
    """diag(2, 1) stretches the unit square to [0, 2] x [0, 1]: density 1/2 there, 0 outside"""
    flow = affine(change_of_variables, [[2.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    x = torch.tensor([[0.2, 0.5], [1.9, 0.1], [1.0, 0.95], [2.5, 0.5], [1.0, -0.2]])
    got = log_prob_of(change_of_variables, flow, probes.uniform01(2), x.double())
    expected = torch.tensor([math.log(0.5)] * 3 + [-math.inf] * 2, dtype=torch.float64)
    assert torch.allclose(got[:3], expected[:3], atol=1e-8) and torch.all(got[3:] == -math.inf), (
        f"log p_X(x) for x = diag(2, 1) z, z ~ U(0, 1)^2, at x = {fmt(x)}: expected log(1/2) = "
        f"{math.log(0.5):.4f} on [0, 2] x [0, 1] and -inf outside, got {fmt(got)}"
    )


def test_gaussian_anchor(change_of_variables, given):
    """x = 3z + 1 with z ~ N(0, 1): log p_X(2) = log N(1/3; 0, 1) - log 3"""
    flow = affine(change_of_variables, [[3.0]], [1.0])
    x = torch.tensor([[2.0], [-0.5]], dtype=torch.float64)
    base = given.standard_normal(1, dtype=torch.float64)
    got = log_prob_of(change_of_variables, flow, base, x)
    expected = normal_log_prob((x - 1) / 3) - math.log(3)
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = 3z + 1, z ~ N(0, 1) at x = {fmt(x)}: expected "
        f"log N(z = (x - 1)/3) - log 3 = {fmt(expected)}, got {fmt(got)}"
    )


def test_exp_of_normal_is_lognormal(change_of_variables, given, probes):
    """x = exp(z), z ~ N(0, 1) has the log-normal density (the derivative taken the right way)"""
    x = torch.tensor([[0.2], [1.0], [3.0]], dtype=torch.float64)
    base = given.standard_normal(1, dtype=torch.float64)
    got = log_prob_of(change_of_variables, probes.Exp(), base, x)
    expected = LogNormal(0.0, 1.0).log_prob(x.squeeze(-1)).double()
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = exp(z), z ~ N(0, 1) at x = {fmt(x)}: expected the log-normal "
        f"log N(log x) - log x = {fmt(expected)}, got {fmt(got)} (a difference of 2 log x means "
        "the log-determinant of the wrong direction was added)"
    )


def random_matrix(d: int, seed: int, negative: bool) -> list[list[float]]:
    """A random well-conditioned ``(d, d)`` matrix (singular values in [0.5, 2]) whose
    determinant has the asked sign."""
    generator = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=generator))
    q2, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=generator))
    singular = 0.5 + 1.5 * torch.rand(d, dtype=torch.float64, generator=generator)
    A = q1 @ torch.diag(singular) @ q2
    if bool(torch.linalg.det(A) < 0) != negative:
        A[:, 0] = -A[:, 0]
    return A.tolist()


# Matrices in 1, 2, 3 and 5 dimensions: a shear (diagonal 1, det 1), reflections (det < 0), a
# rotation-scale, random well-conditioned ones. No shortcut for small d passes all of them.
MATRICES = {
    "1-D a = -0.7": [[-0.7]],
    "shear [[1, 0], [1.5, 1]]": [[1.0, 0.0], [1.5, 1.0]],
    "det < 0 [[1, 2], [3, 1]]": [[1.0, 2.0], [3.0, 1.0]],
    "2 x rotation by 30 deg": [
        [2 * math.cos(math.pi / 6), -2 * math.sin(math.pi / 6)],
        [2 * math.sin(math.pi / 6), 2 * math.cos(math.pi / 6)],
    ],
    "upper shear [[0.5, -2], [0, 3]]": [[0.5, -2.0], [0.0, 3.0]],
    "random 3-D": random_matrix(3, 3, negative=False),
    "random 3-D, det < 0": random_matrix(3, 33, negative=True),
    "random 5-D, det < 0": random_matrix(5, 5, negative=True),
    "random 5-D": random_matrix(5, 55, negative=False),
}
SHIFT = [0.5, -1.0]  # the 2-D shift (anchors and pictures)


def shift_for(d: int) -> list[float]:
    """The shift b used with a ``(d, d)`` matrix: :data:`SHIFT` in 2-D, fixed random otherwise."""
    if d == 2:
        return SHIFT
    return torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(d)).tolist()


def points(n: int, d: int, seed: int, scale: float = 1.0) -> Tensor:
    """``n`` points of N(0, scale^2 I) drawn here (no worker ever produced them)."""
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, dtype=torch.float64, generator=generator)


@pytest.fixture(params=list(MATRICES), ids=list(MATRICES))
def matrix(request) -> tuple[str, Tensor, Tensor]:
    """``(name, A, b)``."""
    A = torch.tensor(MATRICES[request.param], dtype=torch.float64)
    return request.param, A, torch.tensor(shift_for(A.shape[0]), dtype=torch.float64)


def test_affine_forward(change_of_variables, matrix):
    """Affine maps z to A z + b (in 1, 2, 3 and 5 dimensions)"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    z = points(5, d, seed=1)
    x, _ = expect_pair(flow(z), "Affine.forward", 5, d)
    expected = z @ A.T + b
    assert torch.allclose(x.double(), expected, atol=1e-10), (
        f"Affine with A = {name}: forward(z) should be A z + b (z @ A.T + b for rows); "
        f"for z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )


def test_affine_inverse(change_of_variables, matrix):
    """Affine's inverse maps x to A^{-1} (x - b), at points of its own"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    x = points(5, d, seed=2, scale=2.0)  # drawn here: not the image of anything asked before
    z, _ = expect_pair(flow.inverse(x), "Affine.inverse", 5, d)
    expected = torch.linalg.solve(A, (x - b).T).T
    assert torch.allclose(z.double(), expected, atol=1e-10), (
        f"Affine with A = {name}: inverse(x) should be A^{{-1}} (x - b); for x = {fmt(x[0])} "
        f"expected {fmt(expected[0])}, got {fmt(z[0])}"
    )


def test_affine_log_abs_det(change_of_variables, matrix):
    """Affine's log-determinants are +-log|det A|, one per sample"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    det = float(torch.linalg.det(A))
    expected = math.log(abs(det))
    x = points(4, d, seed=3)
    for direction, sign in (("forward", 1.0), ("inverse", -1.0)):
        _, log_abs_det = expect_pair(getattr(flow, direction)(x), f"Affine.{direction}", 4, d)
        want = torch.full((4,), sign * expected, dtype=torch.float64)
        assert torch.allclose(log_abs_det.double(), want, atol=1e-8), (
            f"Affine with A = {name} (det A = {det:.4g}): {direction} should return "
            f"{'' if sign > 0 else '-'}log|det A| = {sign * expected:.4f} for every sample, "
            f"got {fmt(log_abs_det)}"
        )


def test_affine_log_prob_is_gaussian(change_of_variables, given, matrix):
    """A z + b with z ~ N(0, I) has the density N(b, A A^T)"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    x = points(6, d, seed=4, scale=2.0)
    base = given.standard_normal(d, dtype=torch.float64)
    got = log_prob_of(change_of_variables, flow, base, x)
    expected = MultivariateNormal(b, A @ A.T).log_prob(x)
    assert torch.allclose(got, expected, atol=1e-8), (
        f"log p_X(x) for x = A z + b, A = {name}, z ~ N(0, I): expected the Gaussian N(b, A A^T) "
        f"density {fmt(expected)}, got {fmt(got)}"
    )


def test_affine_log_prob_with_a_uniform_base(change_of_variables, probes, matrix):
    """A z + b with z ~ U(0, 1)^d has density 1/|det A| on the image of the cube, 0 outside"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    generator = torch.Generator().manual_seed(5)
    u = 0.05 + 0.9 * torch.rand(6, d, dtype=torch.float64, generator=generator)
    outside = u.clone()
    outside[:3, 0], outside[3:, d - 1] = -0.3, 1.3
    x = torch.cat([u, outside]) @ A.T + b
    got = log_prob_of(change_of_variables, flow, probes.uniform01(d), x)
    expected = -float(torch.linalg.slogdet(A).logabsdet)
    inside_ok = torch.allclose(got[:6], torch.full((6,), expected, dtype=torch.float64), atol=1e-8)
    assert inside_ok and bool(torch.all(got[6:] == -math.inf)), (
        f"log p_X(x) for x = A z + b, A = {name}, z ~ U(0, 1)^{d}: expected -log|det A| = "
        f"{expected:.4f} at the images of points inside the cube and -inf outside; got "
        f"{fmt(got[:6])} inside and {fmt(got[6:])} outside"
    )


def test_density_integrates_to_one(change_of_variables, given):
    """The density of a 2-D affine flow integrates to 1 (grid quadrature)"""
    A = [[1.2, 0.9], [-0.6, 1.5]]  # det 2.34: a wrong log-determinant changes the mass
    flow = affine(change_of_variables, A, SHIFT)
    n, half = 321, 8.0
    grid = torch.linspace(-half, half, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid + SHIFT[0], grid + SHIFT[1], indexing="xy")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=-1)
    base = given.standard_normal(2, dtype=torch.float64)
    log_p = log_prob_of(change_of_variables, flow, base, points)
    mass = float(log_p.exp().sum()) * (2 * half / (n - 1)) ** 2
    assert abs(mass - 1.0) < 1e-3, (
        f"the integral of p_X over the plane for x = A z + b (det A = 2.34) should be 1, "
        f"got {mass:.4f}"
    )
    # The mass alone would not see a density that ignores the flow (N(0, I) integrates to 1
    # too): the grid's densest point must be the image of z = 0, the point b.
    peak = points[int(torch.argmax(log_p))]
    assert float((peak - torch.tensor(SHIFT, dtype=torch.float64)).abs().max()) < 0.1, (
        f"the density of x = A z + b, z ~ N(0, I) should peak at b = {fmt(torch.tensor(SHIFT))}; "
        f"on the grid it peaks at {fmt(peak)}"
    )


@pytest.mark.weight(0.5)
def test_sample_shape_and_one_forward_pass(change_of_variables, given, probes):
    """sample(flow, base, n) returns (n, d) points from one forward pass"""
    flow = probes.CountingShift()
    x = change_of_variables.sample(flow, given.standard_normal(3), 500)
    x = expect_tensor(x, "sample(flow, base, 500) in 3-D", (500, 3), finite=True)
    # The count is the worker's word (student code shares its interpreter): the values back it.
    calls = fetch(flow.calls)
    assert calls == {"forward": 1, "inverse": 0}, (
        f"sample should draw all n base points at once and push them through flow.forward once "
        f"(never the inverse); it called forward {calls['forward']} and inverse "
        f"{calls['inverse']} times"
    )
    mean = x.double().mean(0)
    assert torch.allclose(mean, torch.full((3,), 5.0, dtype=torch.float64), atol=0.3), (
        f"samples of x = z + 5, z ~ N(0, I) should average about 5 in each coordinate, "
        f"got {fmt(mean)}"
    )


def test_sample_follows_the_flow(change_of_variables, given):
    """Samples of A z + b have mean b and covariance A A^T"""
    A = torch.tensor([[1.0, 0.0], [1.5, 0.5]], dtype=torch.float64)
    flow = affine(change_of_variables, A.tolist(), SHIFT)
    base = given.standard_normal(2, dtype=torch.float64)
    x = change_of_variables.sample(flow, base, 20000)
    x = expect_tensor(x, "sample", (20000, 2), finite=True)
    x = x.double()
    mean, cov = x.mean(0), torch.cov(x.T)
    expected = A @ A.T
    ok_mean = torch.allclose(mean, torch.tensor(SHIFT, dtype=torch.float64), atol=0.05)
    assert ok_mean and torch.allclose(cov, expected, atol=0.1), (
        f"20000 samples of x = A z + b should have mean b = {fmt(torch.tensor(SHIFT))} and "
        f"covariance A A^T = {fmt(expected)}; got mean {fmt(mean)} and covariance {fmt(cov)}"
    )


@pytest.mark.weight(2)
@pytest.mark.parametrize("name", ["random 3-D, det < 0", "random 5-D"])
def test_sample_uses_its_base(change_of_variables, probes, name):
    """sample draws from the base it is given: A z + b with z ~ U(0, 1)^d fills the image of the
    cube, and nothing falls outside it"""
    A = torch.tensor(MATRICES[name], dtype=torch.float64)
    d = A.shape[0]
    b = torch.tensor(shift_for(d), dtype=torch.float64)
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    n = 4000
    x = change_of_variables.sample(flow, probes.uniform01(d), n)
    x = expect_tensor(x, f"sample(flow, U(0, 1)^{d}, {n})", (n, d), finite=True).double()
    u = torch.linalg.solve(A, (x - b).T).T  # the base points, recovered here
    low, high = u.min(0).values, u.max(0).values
    inside = bool(low.min() > -1e-8) and bool(high.max() < 1 + 1e-8)
    filled = bool(low.max() < 0.05) and bool(high.min() > 0.95)
    mean_ok = torch.allclose(u.mean(0), torch.full((d,), 0.5, dtype=torch.float64), atol=0.03)
    assert inside and filled and mean_ok, (
        f"{n} samples of x = A z + b (A = {name}) with the base U(0, 1)^{d} should be images of "
        f"points of the unit cube that fill it: A^{{-1}} (x - b) ranges over {fmt(low)} to "
        f"{fmt(high)} per coordinate, with mean {fmt(u.mean(0))} (expected [0, 1] and 0.5): "
        "does sample draw from the base it is given?"
    )


@pytest.mark.weight(2)
def test_log_prob_gradients_flow(change_of_variables, given, probes):
    """Training follows the gradient of log_prob: autograd's gradient (w.r.t. the flow's
    parameters and the points) matches finite differences, for a course flow and for Affine"""
    x = torch.randn(6, 2, dtype=torch.float64)
    base = given.standard_normal(2, dtype=torch.float64)
    A = torch.tensor(MATRICES["det < 0 [[1, 2], [3, 1]]"], dtype=torch.float64)
    b = torch.tensor(SHIFT, dtype=torch.float64)
    for name, flow, density in (
        (
            "x = 1.5 z + 0.3",
            probes.ScaleShift(1.5, 0.3),
            normal_log_prob((x - 0.3) / 1.5) - 2 * math.log(1.5),
        ),
        (
            "Affine",
            affine(change_of_variables, A.tolist(), SHIFT),
            MultivariateNormal(b, A @ A.T).log_prob(x),
        ),
    ):
        what = f"log_prob for {name}, z ~ N(0, I)"
        # Only a right density earns this test: the gradient of a wrong one says nothing.
        got = log_prob_of(change_of_variables, flow, base, x)
        assert torch.allclose(got, density, atol=1e-8), (
            f"{what} should be {fmt(density)}, got {fmt(got)}"
        )
        expect_gradients(
            probes, change_of_variables.log_prob, flow, (flow, base, x), what, "log p_X(x)"
        )


def test_affine_gradients_flow(change_of_variables, probes, matrix):
    """Affine's outputs and log-determinants pass gradients to A, b and the input"""
    name, A, b = matrix
    d = A.shape[0]
    flow = affine(change_of_variables, A.tolist(), b.tolist())
    x = points(5, d, seed=6)
    # Only a right Affine earns this test: the identity passes gradients correctly too.
    out, log_det = expect_pair(flow(x), "Affine.forward", 5, d)
    expected = x @ A.T + b
    log_det_A = float(torch.linalg.slogdet(A).logabsdet)
    assert torch.allclose(out.double(), expected, atol=1e-10) and torch.allclose(
        log_det.double(), torch.full((5,), log_det_A, dtype=torch.float64), atol=1e-8
    ), (
        f"Affine with A = {name}: forward(z) should be (A z + b, log|det A| = {log_det_A:.4f}); "
        f"for z = {fmt(x[0])} expected {fmt(expected[0])}, got {fmt(out[0])} and "
        f"{float(log_det[0]):.4f}"
    )
    for direction in ("forward", "inverse"):
        what = f"Affine with A = {name}, {direction}"
        for output, of in ((0, "the output"), (1, "log|det J|")):
            method = getattr(flow, direction)
            expect_gradients(probes, method, flow, (x,), what, of, output)
