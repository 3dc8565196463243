"""The exact density of ``two_moons`` and its entropy: the floor no model's NLL can beat.

``flows.data.two_moons`` draws a moon with probability 1/2, an angle ``t ~ U(0, pi)`` and adds
``N(0, noise^2 I)`` to the arc point ``c_m(t)``: upper ``(cos t, sin t)``, lower
``(1 - cos t, 0.5 - sin t)``. So the data density is the arc measure convolved with the
Gaussian noise kernel:

    p(x) = 1/2 sum_m  1/pi int_0^pi N(x; c_m(t), noise^2 I) dt

The integral over ``t`` is taken by the midpoint rule on ``ARC_NODES`` angles per moon (their
spacing on the arc, ``pi / ARC_NODES``, is far below ``noise``, so the sum of Gaussians is
smooth and the rule is accurate to many digits). The entropy ``H = -int p log p dx`` is then a
Riemann sum over a grid of spacing ``noise / 10`` reaching ``8 * noise`` beyond the arcs; the
Gaussian kernel is separable, so the whole grid is one matrix product
``p[iy, ix] = sum_k w_k g(y_iy - cy_k) g(x_ix - cx_k)``.

``H`` is the expected NLL of a perfect model; ``-mean log p(x_test)`` is that model's NLL on a
given finite test set (the same floor, with the test set's sampling noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ARC_NODES = 1024  # midpoint angles per moon (4096 gives the same H to 1e-13)
GRID_PER_NOISE = 10  # grid cells per noise standard deviation
MARGIN = 8.0  # grid reaches this many noise std beyond the arcs
CHUNK = 2048  # points per block when evaluating p at arbitrary points


def arc_nodes(nodes: int = ARC_NODES) -> tuple[Tensor, Tensor]:
    """Centres ``c_m(t_k)`` (``(2 * nodes, 2)``) and weights (summing to 1) of the arc measure."""
    t = math.pi * (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    weights = torch.full((2 * nodes,), 1.0 / (2 * nodes), dtype=torch.float64)
    return torch.cat([upper, lower]), weights


def log_density(x: Tensor, noise: float = 0.05) -> Tensor:
    """``log p(x)`` of ``two_moons(noise=noise)`` at the points ``x`` (``(n, 2)``), float64."""
    centres, weights = arc_nodes()
    x = x.to(torch.float64)
    log_norm = -math.log(2 * math.pi * noise**2)
    out = []
    for block in x.split(CHUNK):
        sq = torch.cdist(block, centres).square()
        out.append(torch.logsumexp(weights.log() + log_norm - sq / (2 * noise**2), dim=-1))
    return torch.cat(out)


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
