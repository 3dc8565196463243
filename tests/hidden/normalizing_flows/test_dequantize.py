"""Hidden tests of ``flows/dequantize.py``: uniform dequantization, ``Logit`` and bits/dim.

``dequantize(x, levels, generator)`` is ``y = (x + u) / levels`` with ``u ~ U[0, 1)`` drawn
anew for every entry from ``generator``. The harness recovers the noise ``u = levels * y - x``
as data and checks it: in ``[0, 1)`` (the right cell), uniform (a Kolmogorov-Smirnov test),
independent between neighbouring entries, and a function of the generator's state (the same
state gives the same ``y``, another state another ``y``). Levels, shapes and data are drawn
from this grading run's secret seed, so no table of answers fits them.

``Logit(alpha)`` maps data in (0, 1) to R: its ``inverse`` is ``z = logit(alpha + (1 - 2 alpha)
x)``. It is checked as every flow is (:mod:`autograder.checks`: round trips against its twin,
log-dets against finite-difference Jacobians, the two directions' log-dets negate) and against
the formula computed here, at a secret alpha. ``bits_per_dim(nll, dims, levels)`` is
``(nll / dims + ln levels) / ln 2`` at arguments drawn fresh each run.
"""

from __future__ import annotations

import math

import pytest
import torch
from secret_task import secret_seed

from autograder.checks import expect_pair, expect_tensor, max_error
from autograder.grading.remote import Handle

# Kolmogorov-Smirnov on N noise values: P(D_N > t) <= 2 exp(-2 N t^2) (Dvoretzky-Kiefer-
# Wolfowitz, Massart's constant), so t = sqrt(ln(2 / FALSE_RATE) / (2 N)) fails a correct
# dequantize with probability at most FALSE_RATE = 1e-6 per run (N = 4096: t = 0.042). A
# constant u = 0.5 has D = 0.5, u = rand^2 has D = 0.25, u ~ U[0, 0.9) has D = 0.1.
FALSE_RATE = 1e-6
# Independence: neighbouring entries (along each axis) with |u_i - u_j| < CLOSE happen with
# probability 2 CLOSE = 0.002 for independent noise; noise shared along an axis (one draw per
# row, say) makes them all close. More than SHARED of the pairs fails: for 4000 independent
# pairs that is > 25 standard deviations above the mean 8 (a false failure never happens).
CLOSE, SHARED = 1e-3, 0.05
FILL = 0.05


@pytest.fixture(scope="module")
def secret_seed_of_run(request: pytest.FixtureRequest) -> int:
    return secret_seed(request.config)


@pytest.fixture(scope="module")
def draw(secret_seed_of_run: int) -> dict:
    """This run's levels, shape, data and alpha (a module is collected once per run)."""
    g = torch.Generator().manual_seed(secret_seed_of_run % (1 << 62))
    levels = int(torch.randint(3, 300, (1,), generator=g))
    shape = (int(torch.randint(48, 80, (1,), generator=g)), 8, 8)
    x = torch.randint(levels, shape, generator=g)
    x.view(-1)[:2] = torch.tensor([0, levels - 1])  # the two extreme levels are always there
    alpha = float(0.01 + 0.14 * torch.rand((), generator=g, dtype=torch.float64))
    return {
        "levels": levels,
        "x": x,
        "alpha": alpha,
        "seeds": torch.randint(1 << 30, (3,), generator=g),
    }


def worker_generator(given: Handle, seed: int) -> Handle:
    """A ``torch.Generator`` made in the worker (by the given ``flows.base``'s torch), seeded."""
    generator = given.torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def dequantized(dequantize: Handle, given: Handle, draw: dict, seed: int) -> torch.Tensor:
    x, levels = draw["x"], draw["levels"]
    y = dequantize.dequantize(x, levels, worker_generator(given, seed))
    y = expect_tensor(y, f"dequantize(x of shape {tuple(x.shape)}, {levels})", tuple(x.shape))
    assert y.is_floating_point(), f"dequantize should return floats in [0, 1), got {y.dtype}"
    return expect_tensor(y, "dequantize's output", finite=True)


def noise_of(y: torch.Tensor, draw: dict) -> torch.Tensor:
    """``u = levels * y - x`` in float64: the noise the student added, as data."""
    return y.double() * draw["levels"] - draw["x"].double()


@pytest.fixture
def dequantize_module(modules) -> Handle:
    return modules.dequantize


@pytest.mark.weight(2)
def test_dequantize_stays_in_each_cell(dequantize_module, given, draw):
    """dequantize(x, levels) lies in [x / levels, (x + 1) / levels) for every entry"""
    y = dequantized(dequantize_module, given, draw, int(draw["seeds"][0]))
    u = noise_of(y, draw)
    # float32 output: levels * y is off by up to ~levels * 2^-24 (< 2e-5), far inside a cell.
    slack = draw["levels"] * 2e-7 if y.dtype != torch.float64 else 1e-9
    low, high = float(u.min()), float(u.max())
    assert low >= -slack and high < 1 + slack, (
        f"dequantize(x, levels={draw['levels']}) should be (x + u) / levels with u in [0, 1), so "
        f"that levels * y - x lies in [0, 1); it lies in [{low:.4f}, {high:.4f}]"
    )
    assert float(y.min()) >= 0 and float(y.max()) < 1 + slack, (
        f"dequantized values should lie in [0, 1); they lie in [{float(y.min()):.4f}, "
        f"{float(y.max()):.4f}]"
    )
    # Filling the cells: over 4,000 uniform draws, u < FILL and u > 1 - FILL both happen but
    # with probability (1 - FILL)^4000 < 1e-88 each; no noise (u = 0) or u = 1/2 never does.
    assert low < FILL and high > 1 - FILL, (
        f"dequantize should spread each value over its whole cell [x, x + 1) / levels (u ~ "
        f"U[0, 1)); the noise levels * y - x only covers [{low:.4f}, {high:.4f}]"
    )


@pytest.mark.weight(2)
def test_dequantize_noise_is_uniform_and_independent(dequantize_module, given, draw):
    """The noise u = levels * y - x is uniform on [0, 1) and drawn anew for every entry"""
    y = dequantized(dequantize_module, given, draw, int(draw["seeds"][0]))
    u = noise_of(y, draw)
    values = u.flatten().sort().values.clamp(0, 1)
    n = len(values)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    distance = float(torch.maximum(grid - values, values - (grid - 1 / n)).max())
    limit = math.sqrt(math.log(2 / FALSE_RATE) / (2 * n))
    assert distance <= limit, (
        f"the noise u = levels * y - x should be uniform on [0, 1); over {n} entries its "
        f"distribution is {distance:.3f} away from the uniform one (Kolmogorov-Smirnov; a "
        f"uniform draw stays under {limit:.3f} but once in a million runs); its mean is "
        f"{float(u.mean()):.3f} (expected 0.5), its std {float(u.std()):.3f} (expected 0.289)"
    )
    for axis in range(u.dim()):
        a, b = u.narrow(axis, 0, u.shape[axis] - 1), u.narrow(axis, 1, u.shape[axis] - 1)
        close = float(((a - b).abs() < CLOSE).double().mean())
        assert close <= SHARED, (
            f"the noise should be drawn anew for every entry; along axis {axis} of x (shape "
            f"{tuple(u.shape)}), {close:.0%} of neighbouring entries got the same noise"
        )


@pytest.mark.weight(2)
def test_dequantize_draws_from_its_generator(dequantize_module, given, draw):
    """dequantize draws its noise from the generator given: same state, same output"""
    first_seed, other_seed = int(draw["seeds"][1]), int(draw["seeds"][2])
    first = dequantized(dequantize_module, given, draw, first_seed)
    again = dequantized(dequantize_module, given, draw, first_seed)
    other = dequantized(dequantize_module, given, draw, other_seed)
    assert max_error(first, again) == 0.0, (
        f"dequantize should draw its noise from the generator it is given: two generators "
        f"seeded with {first_seed} should give the same output; they differ by up to "
        f"{max_error(first, again):.3g} (torch.rand(..., generator=generator))"
    )
    changed = float((noise_of(first, draw) - noise_of(other, draw)).abs().gt(1e-6).double().mean())
    assert changed > 0.99, (
        f"generators seeded with {first_seed} and {other_seed} should give different noise in "
        f"(nearly) every entry; only {changed:.1%} of the entries differ"
    )
    generator = worker_generator(given, first_seed)
    x, levels = draw["x"], draw["levels"]
    once = expect_tensor(dequantize_module.dequantize(x, levels, generator), "dequantize")
    twice = expect_tensor(dequantize_module.dequantize(x, levels, generator), "dequantize")
    assert max_error(once, first) == 0.0 and max_error(once, twice) > 0, (
        "dequantize should advance the generator it is given: two calls with the same "
        "generator should draw fresh noise (and the first should match a fresh generator's)"
    )


# ---------------------------------------------------------------------------------------------
# Logit(alpha): data in (0, 1) -> R as the inverse.


def logit_here(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = logit(p)``, ``p = alpha + (1 - 2 alpha) y``, and ``log|det J_{f^{-1}}(y)|``."""
    p = alpha + (1 - 2 * alpha) * y.double()
    log_det = math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)
    return torch.log(p) - torch.log1p(-p), log_det.flatten(1).sum(-1)


def data_points(draw: dict, n: int = 6, d: int = 5, key: int = 1) -> torch.Tensor:
    """Points of (0, 1)^d, some near the edges (where alpha matters), in float64."""
    g = torch.Generator().manual_seed(int(draw["seeds"][0]) + key)
    y = torch.rand(n, d, generator=g, dtype=torch.float64)
    y[0, 0], y[1, 1] = 0.0, 1.0 - 1e-9  # the edges of [0, 1)
    return y


def base_points(draw: dict, n: int = 6, d: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(draw["seeds"][1]))
    return 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)


def logit_flow(modules, draw: dict) -> Handle:
    """``Logit(alpha)`` in float64, after checking that it is a logit at all (so that the
    bijection checks never credit an identity): its inverse takes the edges of (0, 1) out on R
    (alpha <= 0.15 here, so to beyond -+1.7) and 1/2 to 0 (logit(alpha + (1 - 2 alpha) / 2) = 0
    for every alpha)."""
    flow = modules.dequantize.Logit(draw["alpha"])
    flow.double()
    y = torch.tensor([[1e-6, 0.5, 1 - 1e-6]], dtype=torch.float64)
    z, _ = expect_pair(flow.inverse(y), f"Logit({draw['alpha']:.4f}).inverse", 1, 3)
    low, mid, high = z[0].tolist()
    assert low < -1 and abs(mid) < 1e-6 and high > 1, (  # |logit(alpha)| >= 1.7
        f"Logit.inverse should map data in (0, 1) onto R with the logit, taking y near 0 far "
        f"below 0, y = 0.5 to 0 and y near 1 far above 0; at y = [1e-6, 0.5, 1 - 1e-6] it "
        f"gives {[round(v, 4) for v in z[0].tolist()]}"
    )
    return flow


def test_logit_inverse_maps_data_to_the_real_line(modules, draw):
    """Logit(alpha).inverse(y) is logit(alpha + (1 - 2 alpha) y), with its log-det"""
    alpha, y = draw["alpha"], data_points(draw)
    flow = logit_flow(modules, draw)
    z, log_det = expect_pair(flow.inverse(y), f"Logit({alpha:.4f}).inverse", *y.shape)
    want, want_det = logit_here(y, alpha)
    error = max_error(z, want)
    assert error < 1e-8, (
        f"Logit(alpha={alpha:.4f}).inverse(y) should be logit(alpha + (1 - 2 alpha) y), taking "
        f"data in (0, 1) to R (y = 0 to logit(alpha) = {math.log(alpha / (1 - alpha)):.4f}); "
        f"for y = {[round(v, 4) for v in y[0].tolist()]} expected "
        f"{[round(v, 4) for v in want[0].tolist()]}, got {[round(v, 4) for v in z[0].tolist()]}"
    )
    error = max_error(log_det, want_det)
    assert error < 1e-8, (
        f"Logit.inverse's log|det J| should be sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)] "
        f"with p = alpha + (1 - 2 alpha) y: expected {want_det[:3].tolist()}, got "
        f"{log_det[:3].tolist()}"
    )


def test_logit_forward_squeezes_by_alpha(modules, draw):
    """Logit.forward(z) is (sigmoid(z) - alpha) / (1 - 2 alpha): the alpha squeeze undone"""
    alpha, z = draw["alpha"], base_points(draw)
    z[0, :3] = torch.tensor([-40.0, 0.0, 40.0], dtype=torch.float64)
    flow = logit_flow(modules, draw)
    x, _ = expect_pair(flow.forward(z), f"Logit({alpha:.4f}).forward", *z.shape)
    want = (torch.sigmoid(z) - alpha) / (1 - 2 * alpha)
    error = max_error(x, want)
    assert error < 1e-8, (
        f"Logit(alpha={alpha:.4f}).forward(z) should be (sigmoid(z) - alpha) / (1 - 2 alpha) "
        f"(z = -inf, 0, +inf go to {-alpha / (1 - 2 * alpha):.4f}, 0.5, "
        f"{(1 - alpha) / (1 - 2 * alpha):.4f}); for z = {z[0, :3].tolist()} got "
        f"{[round(v, 4) for v in x[0, :3].tolist()]}"
    )


def test_logit_is_a_bijection(modules, check, draw):
    """Logit's inverse undoes its forward both ways (the second direction in its twin)"""
    flow, name = logit_flow(modules, draw), f"Logit({draw['alpha']:.4f})"
    check.invertible(flow, base_points(draw), name, y=data_points(draw, key=2)[2:])
    check.batch_independent(flow, base_points(draw), name, y=data_points(draw, key=3)[2:])


@pytest.mark.weight(2)
def test_logit_log_dets_match_jacobians(modules, check, draw):
    """Logit's log-dets equal those of its Jacobians, and the two directions' negate"""
    flow, name = logit_flow(modules, draw), f"Logit({draw['alpha']:.4f})"
    y = data_points(draw, key=4)[2:].clamp(1e-3, 1 - 1e-3)  # finite differences inside (0, 1)
    check.log_det_matches_jacobian(flow, base_points(draw), name, y=y)
    check.log_dets_negate(flow, base_points(draw), name)


def test_logit_is_differentiable(modules, check, draw):
    """Autograd's gradients of Logit's outputs and log-dets match finite differences"""
    flow, name = logit_flow(modules, draw), f"Logit({draw['alpha']:.4f})"
    check.gradients(flow, base_points(draw)[:3], name, directions=("forward",))
    y = data_points(draw, key=5)[2:5].clamp(1e-3, 1 - 1e-3)
    check.gradients(flow, y, name, directions=("inverse",))


def test_logit_on_images_sums_every_pixel(modules, draw):
    """On images (batch, C, H, W) Logit's log-det sums over every entry of a sample"""
    alpha = draw["alpha"]
    g = torch.Generator().manual_seed(int(draw["seeds"][2]))
    y = torch.rand(3, 2, 3, 3, generator=g, dtype=torch.float64)
    flow = logit_flow(modules, draw)
    out = flow.inverse(y)
    assert isinstance(out, tuple) and len(out) == 2, "Logit.inverse should return a pair"
    z = expect_tensor(out[0], "Logit.inverse's output on images", tuple(y.shape), finite=True)
    log_det = expect_tensor(out[1], "Logit.inverse's log|det J| on images", (3,), finite=True)
    want, want_det = logit_here(y, alpha)
    assert max_error(z, want) < 1e-8 and max_error(log_det, want_det) < 1e-8, (
        f"Logit acts entry by entry: on images of shape (2, 3, 3) its log-det should sum all 18 "
        f"entries, {want_det.tolist()}; got {log_det.tolist()}"
    )


# ---------------------------------------------------------------------------------------------
# bits_per_dim


def test_bits_per_dim_counts_the_dequantization(modules, draw):
    """bits_per_dim(nll, dims, levels) is (nll / dims + ln levels) / ln 2, at fresh arguments"""
    g = torch.Generator().manual_seed(int(draw["seeds"][0]) + 5)
    cases = []
    for _ in range(3):
        dims = int(torch.randint(2, 800, (1,), generator=g))
        levels = int(torch.randint(2, 300, (1,), generator=g))
        nll = float(dims * (4 * torch.rand((), generator=g, dtype=torch.float64) - 3))
        cases.append((nll, dims, levels))
    cases.append((cases[0][0], cases[0][1], draw["levels"]))
    for nll, dims, levels in cases:
        want = (nll / dims + math.log(levels)) / math.log(2)
        for given in (nll, torch.tensor(nll, dtype=torch.float64)):
            got = modules.dequantize.bits_per_dim(given, dims, levels)
            number = float(got) if isinstance(got, (int, float, torch.Tensor)) else math.nan
            if isinstance(got, torch.Tensor) and got.numel() != 1:
                number = math.nan
            assert abs(number - want) < 1e-6 * (1 + abs(want)), (
                f"bits_per_dim(nll={nll:.4f} nats, dims={dims}, levels={levels}) should be "
                f"(nll / dims + ln levels) / ln 2 = {want:.6f} bits (the dequantization's "
                f"ln(levels) per dimension counted); got {got!r}"
            )
            assert isinstance(got, float), (
                f"bits_per_dim should return a Python float, got {type(got).__name__}"
            )
