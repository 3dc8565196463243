"""The secret task of the convergence tests (``test_train.py``) and how its density is scored.

Per grading run the harness draws a secret seed (:mod:`secrets`) and from it a random affine
map ``x -> A x + b`` of two moons (``noise=0.05``); it generates the training data and the
held-out set itself, from that moved distribution, so neither is derivable from anything the
worker sees. Densities are scored here from ``z`` and ``log|det J|``: the held-out points in
small batches among random decoys (twice, with other decoys), grid points that witness the
same answers again among the mass grid, and a few points checked as a flow.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from autograder.checks import expect_pair, log_abs_dets, max_error
from autograder.grading.remote import Handle

SECRET_ENV = "AUTOGRADER_SECRET_SEED"
NOISE = 0.05

# The secret map: A = R(angle) diag(s_1, s_2) F with F a reflection half the time, s_i
# log-uniform in SCALES (condition number <= 1.56, |det A| in [0.64, 1.56]), and b moving the
# data's centre CENTRE by up to SHIFT in each coordinate. Well-conditioned: the flows converge
# as on the plain moons (measured: the comment on THRESHOLD in test_train.py).
SCALES, CENTRE, SHIFT = (0.8, 1.25), (0.5, 0.25), 0.5

# The mass grid: one point drawn uniformly in each cell of a box around the plain moons, moved
# by the secret map (cell area times |det A|). Its Riemann sum of the density must be about 1:
# a density high on the scored points only does not integrate to 1. The reference's sum: 0.998-
# 1.002 on seeds 0-4 of both models (a trained flow puts < 0.3% of its mass outside).
BOX_LO, BOX_HI, CELLS = (-1.5, -1.0), (2.5, 1.5), (160, 100)  # (x, y) cells of 0.025 x 0.025
MASS_RANGE = (0.9, 1.05)
# Held-out points go in batches of SCORED among as many decoys; WITNESSES grid points (those of
# cells holding held-out points) go with them and again with the grid. The stack is float64 in
# the evaluator, so one point's log-density is the same in any batch to ~1e-12.
SCORED, WITNESSES, SAME_TOL = 50, 200, 1e-6
# Scored points checked as a flow, the step of the fresh points z +- d and of the differences.
FLOW_POINTS, STEP, FD_STEP = 16, 1e-6, 1e-6


def normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row, in float64."""
    return -0.5 * (z.double() ** 2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def two_moons_here(n: int, generator: torch.Generator) -> Tensor:
    """``flows.data.two_moons(n, noise=0.05)``, computed in the harness from its own generator
    (the worker's module could have been replaced, and its seeds are public)."""
    t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return torch.stack([x, y], dim=-1) + NOISE * noise


def secret_seed(config: pytest.Config) -> int:
    """``--secret-seed``, else ``$AUTOGRADER_SECRET_SEED``, else drawn fresh (:mod:`secrets`)."""
    fixed = config.getoption("--secret-seed", default=None) or os.environ.get(SECRET_ENV)
    return int(fixed) if fixed not in (None, "") else secrets.randbits(62)


@dataclass(frozen=True)
class Task:
    """The secret task: two moons moved by ``x -> A x + b``, and its streams of points.

    Every draw comes from a generator seeded with ``(secret, stream)``: the training data of try
    ``k`` is stream ``k``, the held-out set, decoys and grid jitter have streams of their own.
    """

    secret: int
    matrix: Tensor  # A, (2, 2) float64
    shift: Tensor  # b, (2,) float64

    @classmethod
    def draw(cls, secret: int) -> Task:
        u = torch.rand(6, generator=cls.generator_of(secret, -1), dtype=torch.float64)
        angle, (lo, hi) = 2 * math.pi * float(u[0]), (math.log(s) for s in SCALES)
        flip = torch.tensor([1.0 if u[3] < 0.5 else -1.0, 1.0], dtype=torch.float64)
        scales = torch.exp(lo + (hi - lo) * u[1:3]) * flip
        c, s = math.cos(angle), math.sin(angle)
        matrix = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ torch.diag(scales)
        centre = torch.tensor(CENTRE, dtype=torch.float64)
        return cls(secret, matrix, centre + SHIFT * (2 * u[4:6] - 1) - matrix @ centre)

    @staticmethod
    def generator_of(secret: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed((secret * 1_000_003 + stream + 7) % (1 << 62))

    @property
    def log_det(self) -> float:
        """``log|det A|``: what the map adds to the entropy, and to every bound on an NLL."""
        return float(torch.linalg.slogdet(self.matrix).logabsdet)

    def move(self, x: Tensor) -> Tensor:
        return x.double() @ self.matrix.T + self.shift

    def pull_back(self, y: Tensor) -> Tensor:
        return torch.linalg.solve(self.matrix, (y.double() - self.shift).T).T

    def sample(self, n: int, stream: int) -> Tensor:
        return self.move(two_moons_here(n, self.generator_of(self.secret, stream)))

    def retry(self, attempt: int) -> Task:
        """The secret task of try ``attempt``: this one for the first, then fresh ones derived
        from the secret (so ``AUTOGRADER_SECRET_SEED`` replays every try)."""
        if attempt == 0:
            return self
        generator = self.generator_of(self.secret, 1000 + attempt)
        return Task.draw(int(torch.randint(1 << 62, (1,), generator=generator)))

    def seed(self, attempt: int) -> int:
        """The torch seed of try ``attempt`` (its initialisation and ``train(seed=...)``)."""
        generator = self.generator_of(self.secret, 50 + attempt)
        return int(torch.randint(1 << 31, (1,), generator=generator))


def jittered_grid(task: Task) -> tuple[Tensor, float]:
    """One point drawn uniformly in each cell of the box (rows: y), moved by the secret map, and
    the moved cell's area (``|det A|`` times the box's)."""
    (nx, ny), generator = CELLS, Task.generator_of(task.secret, 70)
    hx, hy = (BOX_HI[0] - BOX_LO[0]) / nx, (BOX_HI[1] - BOX_LO[1]) / ny
    ix, iy = torch.meshgrid(torch.arange(nx), torch.arange(ny), indexing="xy")
    u = torch.rand(nx * ny, 2, generator=generator, dtype=torch.float64)
    x = BOX_LO[0] + (ix.flatten() + u[:, 0]) * hx
    y = BOX_LO[1] + (iy.flatten() + u[:, 1]) * hy
    return task.move(torch.stack([x, y], -1)), hx * hy * math.exp(task.log_det)


def witnesses(task: Task, held_out: Tensor) -> Tensor:
    """Indices of the grid points of (up to WITNESSES) cells that hold held-out points."""
    plain = task.pull_back(held_out[:WITNESSES])
    (nx, ny), lo = CELLS, torch.tensor(BOX_LO, dtype=torch.float64)
    size = (torch.tensor(BOX_HI, dtype=torch.float64) - lo) / torch.tensor(CELLS)
    cell = ((plain - lo) / size).floor().long()
    inside = (cell[:, 0] >= 0) & (cell[:, 0] < nx) & (cell[:, 1] >= 0) & (cell[:, 1] < ny)
    return (cell[inside, 1] * nx + cell[inside, 0]).unique()


def log_density(probes: Handle, flow: Handle, x: Tensor, what: str) -> Tensor:
    """``log p_X(x) = log N(z; 0, I) + log|det J_{f^{-1}}(x)|`` from one ``inverse`` call."""
    out = probes.call_on_own_device(flow, "inverse", x)
    z, log_det = expect_pair(out, what, len(x), 2, finite=False)  # a density may be 0 somewhere
    return torch.nan_to_num(normal_log_prob(z) + log_det.double(), nan=-math.inf)


def among_decoys(probes: Handle, flow: Handle, task: Task, scored: Tensor, stream: int) -> Tensor:
    """``log p_X`` of ``scored``, asked SCORED at a time among as many fresh decoys (half from
    the task's distribution, half uniform over the moved grid's box), shuffled."""
    generator = Task.generator_of(task.secret, stream)
    order = torch.randperm(len(scored), generator=generator)
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in (BOX_LO, BOX_HI))
    box = lo + (hi - lo) * torch.rand(len(scored), 2, generator=generator, dtype=torch.float64)
    decoys = torch.cat([task.sample(len(scored), stream + 1), task.move(box)])
    decoys = decoys[torch.randperm(len(decoys), generator=generator)[: len(scored)]]
    out = torch.empty(len(scored), dtype=torch.float64)
    for chunk in order.split(SCORED):
        points = torch.cat([scored[chunk], decoys[chunk]])
        mix = torch.randperm(len(points), generator=generator)
        log_p = torch.empty(len(points), dtype=torch.float64)
        log_p[mix] = log_density(probes, flow, points[mix], "the trained flow's inverse")
        out[chunk] = log_p[: len(chunk)]
    return out


@dataclass
class Scores:
    held_out: Tensor  # log p_X of the held-out points
    grid: Tensor  # log p_X of the grid points (one call)
    mass: float  # the grid's Riemann sum of p_X

    @property
    def nll(self) -> float:
        return float(-self.held_out.mean())


def score(probes: Handle, flow: Handle, task: Task, held_out: Tensor) -> Scores:
    """The held-out density (asked twice among other decoys, with witness grid points) and the
    grid's; an answer that depends on the rest of its batch fails here."""
    grid, area = jittered_grid(task)
    chosen = witnesses(task, held_out)
    scored = torch.cat([held_out, grid[chosen]])
    first, second = (among_decoys(probes, flow, task, scored, s) for s in (80, 90))
    order = torch.randperm(len(grid), generator=Task.generator_of(task.secret, 99))
    grid_log_p = torch.empty(len(grid), dtype=torch.float64)
    grid_log_p[order] = log_density(probes, flow, grid[order], "the trained flow's inverse")
    apart = max_error(first.clamp(min=-1e6), second.clamp(min=-1e6))
    assert apart <= SAME_TOL, (
        f"the trained flow's density at a point should not depend on the other points of its "
        f"batch: asked for the same held-out points among other random points, its log-density "
        f"changed by up to {apart:.3g} nats"
    )
    alone = max_error(first[len(held_out) :].clamp(min=-1e6), grid_log_p[chosen].clamp(min=-1e6))
    assert alone <= SAME_TOL, (
        f"the trained flow's density at a point should not depend on the other points of its "
        f"batch: points asked among a few random ones and again among a grid over the data got "
        f"log-densities up to {alone:.3g} nats apart"
    )
    mass = float(grid_log_p.clamp(max=50).exp().sum()) * area
    return Scores(first[: len(held_out)], grid_log_p, mass)


def check_flow(probes: Handle, flow: Handle, x: Tensor, scored: Tensor, task: Task) -> None:
    """The scored stack is a flow at the points ``x`` (scored ``scored``): its log-det is that of
    the Jacobian of ``z = f^{-1}(x)`` (finite differences here), and ``forward`` at fresh points
    ``z +- d`` gives ``x +- J_f d`` with ``J_f = J_{f^{-1}}^{-1}`` (to third order in ``d``).

    A ReLU conditioner makes the maps piecewise smooth: where the one-sided differences of ``z``
    disagree, a kink lies within the step and the point is skipped (a point in about a thousand);
    most points must be smooth, and every smooth one right.
    """
    n, what = len(x), "the trained flow's inverse"

    def inverse(points: Tensor) -> tuple[Tensor, Tensor]:
        out = probes.call_on_own_device(flow, "inverse", points)
        return expect_pair(out, what, len(points), 2)

    z, log_det = inverse(x)
    again = max_error(normal_log_prob(z) + log_det.double(), scored)
    assert again <= SAME_TOL, (
        f"the trained flow's density at a point should not depend on when or with what it is "
        f"asked: at {n} held-out points it changed by up to {again:.3g} nats"
    )
    eye = FD_STEP * torch.eye(2, dtype=torch.float64)
    moved = torch.cat([(x[:, None] + eye).reshape(-1, 2), (x[:, None] - eye).reshape(-1, 2)])
    out = inverse(moved)[0].double()
    plus, minus = out[: 2 * n].reshape(n, 2, 2), out[2 * n :].reshape(n, 2, 2)
    ahead = ((plus - z.double()[:, None]) / FD_STEP).transpose(1, 2)  # one-sided Jacobians
    behind = ((z.double()[:, None] - minus) / FD_STEP).transpose(1, 2)
    jacobian = (ahead + behind) / 2
    smooth = (ahead - behind).flatten(1).norm(dim=1) <= 1e-3 * jacobian.flatten(1).norm(dim=1)
    assert int(smooth.sum()) >= n // 2, (
        f"the trained flow's z = f^-1(x) should be differentiable: at {n - int(smooth.sum())} of "
        f"{n} held-out points its one-sided finite differences disagree"
    )
    measured = log_abs_dets(jacobian)
    error = ((measured - log_det.double()).abs() / (1 + measured.abs()))[smooth]
    assert float(error.max()) <= 1e-5, (
        f"the trained flow's log|det J_f^-1| should be that of its Jacobian: at held-out points "
        f"it is off by up to {float(error.max()):.3g} (relative) from finite differences of "
        f"z = f^-1(x)"
    )
    d = STEP * torch.randn(n, 2, generator=Task.generator_of(task.secret, 95), dtype=torch.float64)
    up, _ = expect_pair(probes.call_on_own_device(flow, "forward", z + d), "forward", n, 2)
    down, _ = expect_pair(probes.call_on_own_device(flow, "forward", z - d), "forward", n, 2)
    slope = torch.linalg.solve(jacobian, d.unsqueeze(-1)).squeeze(-1)  # J_f d
    mid = ((up.double() + down.double()) / 2 - x).norm(dim=1)
    off = ((up.double() - down.double()) / 2 - slope).norm(dim=1) / slope.norm(dim=1)
    wrong = smooth & ((mid > 1e-8) | (off > 1e-3))  # nan counts as right: the sum below not
    wrong |= smooth & ~(mid.isfinite() & off.isfinite())
    assert int(wrong.sum()) <= int(smooth.sum()) // 4, (
        f"the trained flow's forward should invert its inverse: at points z +- d next to z = "
        f"f^-1(x) (|d| ~ {STEP:g}) it should give x +- J_f d, but at {int(wrong.sum())} of "
        f"{int(smooth.sum())} held-out points x it does not (midpoint off by up to "
        f"{float(mid[smooth].max()):.3g}, difference by up to {float(off[smooth].max()):.3g} "
        f"relative)"
    )
