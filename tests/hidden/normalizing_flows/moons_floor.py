"""The true density of two moons and of the secret task: the floor of a held-out NLL.

``two_moons(noise)`` picks a moon with probability 1/2, an angle ``t ~ U(0, pi)``, the arc point
``c_m(t)`` (upper ``(cos t, sin t)``, lower ``(1 - cos t, 0.5 - sin t)``) and adds
``N(0, noise^2 I)``. Its density is the arc measure convolved with the Gaussian kernel:

    p(x) = 1/2 sum_m 1/pi int_0^pi N(x; c_m(t), noise^2 I) dt

taken here by Gauss-Legendre quadrature on ``ARC_NODES`` angles per moon, in float64. The
integrand is smooth in ``t`` but cut at the arcs' ends, where the midpoint rule's error is
``O(h^2)`` (1,024 midpoint angles are off by up to 6e-4 in ``log p`` at held-out points);
Gauss-Legendre's 128 angles agree with 4,096 to 2e-11 there, with 32,768 midpoint angles to
6e-7 (that rule's own error). The secret task moves the moons by ``y = A x + b``, so
``p_Y(y) = p(A^{-1}(y - b)) / |det A|``.

The *floor* of a held-out set is the NLL the true density scores on it, ``-mean log p_Y(y)``:
no model beats it but by the set's sampling noise (about 0.017 nats for 2,000 points around the
entropy, 0.289 nats). On the moons' scale (``log|det A|`` taken off, as the test reports NLLs)
it is ``-mean log p(x)`` at the pulled-back points. The density is checked to integrate to 1 on
the test's mass grid (one jittered point per cell, moved by the map): its Riemann sum was
0.9936-1.0061 over secret tasks 0-199 (the jitter's noise), so ``MASS_TOL`` is 0.02.
"""

from __future__ import annotations

import functools
import math

import numpy
import torch
from secret_task import NOISE, Task, jittered_grid
from torch import Tensor

ARC_NODES = 128  # Gauss-Legendre angles per moon
CHUNK = 2048  # points per block
MASS_TOL = 0.02  # |Riemann sum on the mass grid - 1| of the true density


def arc_nodes(nodes: int = ARC_NODES) -> tuple[Tensor, Tensor]:
    """Centres ``c_m(t_k)`` (``(2 * nodes, 2)``) and weights (summing to 1) of the arc measure."""
    roots, weights = numpy.polynomial.legendre.leggauss(nodes)  # on [-1, 1], weights sum to 2
    t = torch.from_numpy(math.pi * (roots + 1) / 2)
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    half = torch.from_numpy(weights / 4)  # each moon: probability 1/2, 1/pi dt over [0, pi]
    return torch.cat([upper, lower]), torch.cat([half, half])


def log_density(x: Tensor, noise: float = NOISE) -> Tensor:
    """``log p(x)`` of ``two_moons(noise=noise)`` at the points ``x`` (``(n, 2)``), float64."""
    centres, weights = arc_nodes()
    log_norm = -math.log(2 * math.pi * noise**2)
    out = []
    for block in x.to(torch.float64).split(CHUNK):
        sq = torch.cdist(block, centres).square()
        out.append(torch.logsumexp(weights.log() + log_norm - sq / (2 * noise**2), dim=-1))
    return torch.cat(out)


def task_log_density(task: Task, y: Tensor) -> Tensor:
    """``log p_Y(y) = log p(A^{-1}(y - b)) - log|det A|`` of the secret task."""
    return log_density(task.pull_back(y)) - task.log_det


@functools.lru_cache(maxsize=4)  # both models' first tries share the run's task
def mass(task: Task) -> float:
    """The Riemann sum of ``p_Y`` on the test's mass grid (about 1)."""
    grid, area = jittered_grid(task)
    return float(task_log_density(task, grid).exp().sum()) * area


def floor(task: Task, held_out: Tensor) -> float | None:
    """The true density's NLL on ``held_out``, on the moons' scale; ``None`` if the density does
    not integrate to 1 on the mass grid (then it is not the task's, and there is no floor)."""
    if abs(mass(task) - 1) > MASS_TOL:
        return None
    return float(-task_log_density(task, held_out).mean()) - task.log_det
