"""The secret task of the digits part (``test_digits.py``) and how its densities are scored.

The harness reads the 1,797 digits from the course's own copy of ``digits.csv.gz`` (never the
worker's), and per grading run draws a secret seed (:func:`secret_task.secret_seed`) and from it:

* a secret split: 359 held-out digits, the other 1,438 for training (not the public split);
* a secret *frame*: one of the 8 symmetries of the square (rotations by 90 degrees, with or
  without a mirror), then with probability 1/2 the grey levels inverted (``16 - x``). Every
  image the worker sees or is scored on is in that frame. A flow of the course's kind is as
  good in every frame (measured: benchmarks/README.md, "Digits"), while parameters fitted
  offline to the public digits, or a table of them, meet images they never saw in 15 frames
  of 16;
* its own dequantization noise for the 16 training copies, the held-out digits and the
  out-of-distribution sets (held-out digits upside down, mirrored, with noise, shuffled,
  inverted, and images of uniform noise; each built in the public frame, then moved to the
  secret one, so "upside down" means the same thing in every frame).

What the secret cannot hide: the digits are public, so a ``train`` that compares its data with
them can tell the frame and the split, and load parameters fitted offline in the right frame;
nothing here tells such a flow from a trained one (a verdict that training moved the parameters
with the data would). A blob loaded blindly meets the wrong frame in 15 runs of 16.

Densities are computed here from ``(z, log|det J|)`` of the trained flow's twin (rebuilt in the
evaluation worker, float64): held-out and out-of-distribution points asked together in small
shuffled batches, twice with other companions (the answers must agree: a density that reads its
whole query gains nothing), and at a few held-out points the twin must be a flow (its log-det
that of the Jacobian measured here, its forward undoing its inverse at fresh points).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from secret_task import Task, normal_log_prob
from torch import Tensor

from autograder.checks import expect_pair, jacobians, log_abs_dets, max_error
from autograder.grading.remote import Handle

LEVELS, SIDE, DIMS = 17, 8, 64
N_IMAGES, N_HELD_OUT, COPIES = 1797, 359, 16
FILE = "digits.csv.gz"
_HERE = Path(__file__).resolve()
# The course's copies: the release's (what the Gradescope zip ships), else the reference's.
COPIES_OF_FILE = (
    _HERE.parents[3] / "assignments" / _HERE.parent.name / "flows" / FILE,
    _HERE.parents[3] / "solutions" / _HERE.parent.name / "flows" / FILE,
)
# Out-of-distribution sets, each one image per held-out digit.
OOD = ("upside_down", "mirrored", "noise4", "shuffled", "inverted", "uniform")
# Scored points go SCORED at a time, shuffled among as many others; the twin is float64, so a
# point's log-density is the same in any batch to ~1e-9 nats (64 dims, logit near the edges).
SCORED, SAME_TOL = 64, 1e-6
FLOW_POINTS, STEP, FD_STEP = 3, 1e-6, 1e-6


def course_digits() -> Tensor:
    """All 1,797 digits ``(1797, 64)`` int64, read here from the course's copy of the file."""
    for path in COPIES_OF_FILE:
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
            images = torch.from_numpy(table[:, :DIMS])
            if images.shape != (N_IMAGES, DIMS) or images.min() < 0 or images.max() >= LEVELS:
                raise ValueError(f"{path}: expected {N_IMAGES} rows of 64 levels 0..16")
            return images
    raise FileNotFoundError(f"{COPIES_OF_FILE[0]}: missing (run: autograder build)")


def dequantized(images: Tensor, generator: torch.Generator) -> Tensor:
    """``(x + u) / 17``, ``u ~ U[0, 1)``, in float64, from the harness's own generator."""
    noise = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    return (images.double() + noise) / LEVELS


@dataclass(frozen=True)
class DigitsTask:
    """This run's split, frame and streams of noise, all from the secret seed."""

    secret: int
    held_out: Tensor  # indices of the held-out digits, (359,)
    turns: int  # rotations by 90 degrees, 0..3
    mirror: bool  # columns reversed first
    invert: bool  # grey levels 16 - x last

    @classmethod
    def draw(cls, secret: int) -> DigitsTask:
        generator = Task.generator_of(secret, 200)
        held_out = torch.randperm(N_IMAGES, generator=generator)[:N_HELD_OUT].sort().values
        turns, mirror, invert = torch.randint(2, (3,), generator=generator).tolist()
        turns = 2 * turns + int(torch.randint(2, (1,), generator=generator))
        return cls(secret, held_out, turns, bool(mirror), bool(invert))

    def generator(self, stream: int) -> torch.Generator:
        return Task.generator_of(self.secret, stream)

    def described(self) -> str:
        frame = [f"rotated by {90 * self.turns} degrees"] + ["mirrored"] * self.mirror
        return ", ".join(frame + ["grey levels inverted"] * self.invert)

    def frame(self, images: Tensor) -> Tensor:
        """Integer images ``(n, 64)`` moved to the secret frame."""
        square = images.reshape(-1, SIDE, SIDE)
        square = square.flip(2) if self.mirror else square
        moved = torch.rot90(square, self.turns, dims=(1, 2)).reshape(-1, DIMS)
        return LEVELS - 1 - moved if self.invert else moved

    def split(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(training digits, held-out digits) in the public frame."""
        held = torch.zeros(len(images), dtype=torch.bool)
        held[self.held_out] = True
        return images[~held], images[held]

    def training_data(self, images: Tensor) -> Tensor:
        """``COPIES`` dequantizations of the training digits in the secret frame, float32."""
        train, _ = self.split(images)
        return dequantized(self.frame(train).repeat(COPIES, 1), self.generator(210)).float()

    def held_out_data(self, images: Tensor) -> Tensor:
        return dequantized(self.frame(self.split(images)[1]), self.generator(220))

    def ood_data(self, images: Tensor) -> dict[str, Tensor]:
        """Each out-of-distribution set, built in the public frame, framed, dequantized."""
        test, generator = self.split(images)[1], self.generator(230)
        square = test.reshape(-1, SIDE, SIDE)
        order = torch.stack([torch.randperm(DIMS, generator=generator) for _ in test])
        noisy = test + 4.0 * torch.randn(test.shape, generator=generator, dtype=torch.float64)
        sets = {
            "upside_down": square.flip(1).reshape(test.shape),
            "mirrored": square.flip(2).reshape(test.shape),
            "noise4": noisy.round().clamp(0, LEVELS - 1).long(),
            "shuffled": test.gather(1, order),
            "inverted": LEVELS - 1 - test,
            "uniform": torch.randint(LEVELS, test.shape, generator=generator),
        }
        return {
            name: dequantized(self.frame(sets[name]), self.generator(240 + i))
            for i, name in enumerate(OOD)
        }

    def seed(self) -> int:
        """The torch seed of the worker's ``make_flow()`` and of ``train(seed=...)``."""
        return int(torch.randint(1 << 31, (1,), generator=self.generator(250)))


def bits_per_dim(nll_nats: float) -> float:
    """``(nll / 64 + ln 17) / ln 2``: per-image NLL of dequantized digits, as bits/dim."""
    return (nll_nats / DIMS + math.log(LEVELS)) / math.log(2)


def auroc(inlier: Tensor, outlier: Tensor) -> float:
    """``P(outlier's score > inlier's)``, ties counted half (Mann-Whitney); NaN scores lose."""
    scores = torch.cat([inlier, outlier]).double().nan_to_num(nan=-math.inf)
    _, group, counts = scores.unique(return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid_rank = ends - (counts.double() - 1) / 2  # the average rank of each group of ties
    ranks = mid_rank[group]
    n_in, n_out = len(inlier), len(outlier)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def log_density(probes: Handle, flow: Handle, x: Tensor) -> Tensor:
    """``log p_X(x) = log N(z; 0, I) + log|det J_{f^{-1}}(x)|`` from one ``inverse`` call."""
    out = probes.call_on_own_device(flow, "inverse", x)
    z, log_det = expect_pair(out, "the trained flow's inverse", len(x), DIMS, finite=False)
    return torch.nan_to_num(normal_log_prob(z) + log_det.double(), nan=-math.inf)


def mixed(probes: Handle, flow: Handle, points: Tensor, generator: torch.Generator) -> Tensor:
    """``log p_X`` of every point, asked in shuffled batches of ``2 * SCORED``."""
    order = torch.randperm(len(points), generator=generator)
    out = torch.empty(len(points), dtype=torch.float64)
    for chunk in order.split(2 * SCORED):
        out[chunk] = log_density(probes, flow, points[chunk])
    return out


def score(probes: Handle, flow: Handle, task: DigitsTask, sets: dict[str, Tensor]) -> Tensor:
    """``log p_X`` of every point of ``sets`` (concatenated in order), asked twice in batches
    with other companions; an answer that depends on the rest of its batch fails here."""
    points = torch.cat(list(sets.values()))
    first, second = (mixed(probes, flow, points, task.generator(s)) for s in (260, 270))
    apart = max_error(first.clamp(min=-1e6), second.clamp(min=-1e6))
    assert apart <= SAME_TOL, (
        f"the trained flow's density at an image should not depend on the other images of its "
        f"batch: asked for the same images among other ones, its log-density changed by up to "
        f"{apart:.3g} nats"
    )
    return first


def check_flow(probes: Handle, flow: Handle, x: Tensor, scored: Tensor, task: DigitsTask) -> None:
    """At held-out digits ``x`` (scored ``scored``) the twin is a flow: the same density when
    asked again alone, log-det that of the Jacobian of ``z = f^{-1}(x)`` (finite differences
    here), and ``forward`` at fresh points ``z +- d`` gives ``x +- J_f d``."""
    what = "the trained flow's inverse"
    out = probes.call_on_own_device(flow, "inverse", x)
    z, log_det = expect_pair(out, what, len(x), DIMS)
    again = max_error(normal_log_prob(z) + log_det.double(), scored)
    assert again <= SAME_TOL, (
        f"the trained flow's density at an image should not depend on when or with what it is "
        f"asked: at {len(x)} held-out digits it changed by up to {again:.3g} nats"
    )

    def inverse(points: Tensor) -> Tensor:
        out = probes.call_on_own_device(flow, "inverse", points)
        return expect_pair(out, what, len(points), DIMS)[0]

    jacobian = jacobians(inverse, x, eps=FD_STEP)
    measured = log_abs_dets(jacobian)
    error = float(((measured - log_det.double()).abs() / (1 + measured.abs())).max())
    assert error <= 1e-5, (
        f"the trained flow's log|det J_f^-1| should be that of its Jacobian: at held-out digits "
        f"it is off by up to {error:.3g} (relative) from finite differences of z = f^-1(x)"
    )
    d = STEP * torch.randn(len(x), DIMS, generator=task.generator(280), dtype=torch.float64)
    up = expect_pair(probes.call_on_own_device(flow, "forward", z + d), "forward", len(x), DIMS)
    down = expect_pair(probes.call_on_own_device(flow, "forward", z - d), "forward", len(x), DIMS)
    slope = torch.linalg.solve(jacobian, d.unsqueeze(-1)).squeeze(-1)  # J_f d
    mid = float(((up[0].double() + down[0].double()) / 2 - x).norm(dim=1).max())
    off = ((up[0].double() - down[0].double()) / 2 - slope).norm(dim=1) / slope.norm(dim=1)
    assert mid <= 1e-7 and float(off.max()) <= 1e-3, (
        f"the trained flow's forward should invert its inverse: at points z +- d next to z = "
        f"f^-1(x) of held-out digits (|d| ~ {STEP:g}) it should give x +- J_f d; the midpoint is "
        f"off by up to {mid:.3g}, the difference by up to {float(off.max()):.3g} (relative)"
    )
