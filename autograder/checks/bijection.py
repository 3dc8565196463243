"""The bijection checks, written once for every layer of every part.

:class:`BijectionChecks` takes a layer (a handle in the main worker), points chosen here, and the
layer's name for messages. **No check feeds a worker a tensor it produced**: the second
direction of every round trip is asked of the layer's *twin*, rebuilt in the part's evaluation
worker from its recipe and ``state_dict`` (:func:`autograder.grading.remote.rebuild`), a
process that never saw the first direction's answer; and the inverse-first trip starts at
*fresh* points (random blends of the given ones) that neither worker produced. A layer whose
inverse is right only behind a table of recent outputs (exact bytes or nearest neighbour)
fails, because the twin has no table. Outputs must be finite (NaN/inf anywhere fails first).

Methods (each raises AssertionError with a message in the lesson's terms):

- ``invertible(flow, x, name, y=None)``: ``f^{-1}(f(x)) = x`` (f in the worker, f^{-1} in the
  twin) and ``f(f^{-1}(y)) = y`` (f^{-1} in the worker, f in the twin); ``y`` are data-space
  points (default: fresh blends of ``x``, for layers on all of R^d). The twin is first checked
  to compute what the original computes, at other points (a layer keeping state outside
  ``state_dict`` is told so).
- ``log_det_matches_jacobian(flow, x, name, y=None, directions=...)``: each log|det J| against
  ``log|det|`` of the Jacobian measured here by finite differences (forward at ``x``, inverse
  at ``y``, default ``x``).
- ``log_dets_negate(flow, z, name)``: ``log|det J_f(z)| = -log|det J_{f^{-1}}(f(z))|``, the
  second in the twin.
- ``batch_independent(flow, x, name, y=None)``: a sample's outputs do not depend on the rest of
  its batch (alone and among other samples, asked of the twin, against the worker's batch).
- ``cheap(flow, x, name, directions=..., allowed=())``: no determinant, inverse or autograd
  Jacobian (:data:`EXPENSIVE_CALLS`) in a wide layer, minus ``allowed`` (e.g. ``{"slogdet"}``
  for a c x c determinant). This is the worker's own report (a spy in the student's
  interpreter): give it few points and back it with a value check.
- ``gradients(flow, x, name, directions=...)``: autograd's gradients of the outputs and
  log-dets (w.r.t. parameters and input) against finite differences (needs ``probes`` and a
  float64 layer).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import torch

from autograder.checks.gradients import expect_gradients
from autograder.checks.jacobians import jacobians, log_abs_dets
from autograder.checks.values import expect_pair, expect_tensor, kind, max_error
from autograder.grading import remote
from autograder.grading.remote import Handle

# Calls that cost more than O(d) per sample: a determinant, an inverse, or an autograd Jacobian.
EXPENSIVE_CALLS = frozenset(
    {"det", "logdet", "slogdet", "linalg_det", "linalg_slogdet", "inverse", "linalg_inv"}
    | {"linalg_inv_ex", "linalg_solve", "linalg_pinv", "pinverse", "grad", "jacobian", "vjp"}
    | {"jvp", "linalg_eig", "linalg_eigvals", "linalg_lu_factor", "linalg_lu"}
)
DIRECTIONS = ("forward", "inverse")
MAPS = {"forward": "f", "inverse": "f^{-1}"}
TWIN = "a copy rebuilt in a fresh worker from its constructor arguments and state_dict"


def fresh_points(x: torch.Tensor, key: str) -> torch.Tensor:
    """Random blends ``w x_i + (1 - w) x_j`` of the rows of ``x`` (inside any convex domain the
    rows are in), drawn from a generator seeded by ``key``: points no worker produced."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    n = x.shape[0]
    w = 0.2 + 0.6 * torch.rand(n, 1, dtype=torch.float64, generator=generator)
    other = x.double()[torch.randperm(n, generator=generator)]
    return (w * x.double() + (1 - w) * other).to(x.dtype)


class BijectionChecks:
    """Checks of flow layers in both directions (see the module doc).

    ``evaluator`` is the part's evaluation worker (a :class:`remote.Session`), where twins are
    rebuilt; ``probes`` the course's probes module in the main worker (for ``gradients``).
    """

    directions = DIRECTIONS
    maps = MAPS

    def __init__(
        self,
        tol: float,
        jacobian_tol: float,
        evaluator: remote.Session,
        probes: Handle | None = None,
    ) -> None:
        self.tol, self.jacobian_tol = tol, jacobian_tol
        self.evaluator, self.probes = evaluator, probes

    def twin(self, flow: Handle) -> Handle:
        """``flow`` rebuilt in the evaluation worker."""
        return remote.rebuild(flow, self.evaluator)

    def outputs(self, flow: Handle, direction: str, x: torch.Tensor, name: str):
        return expect_pair(getattr(flow, direction)(x), f"{name}.{direction}", *x.shape)

    def faithful_twin(self, flow: Handle, x: torch.Tensor, name: str) -> Handle:
        """The twin, after checking that it computes what ``flow`` computes (at fresh points)."""
        twin = self.twin(flow)
        probe = fresh_points(x, f"{name}/faithful")
        want, want_det = self.outputs(flow, "forward", probe, name)
        got, got_det = self.outputs(twin, "forward", probe, f"{name} ({TWIN})")
        error = max(max_error(want, got), max_error(want_det, got_det))
        assert error <= self.tol, (
            f"{name}: {TWIN} computes something else than the original (forward differs by "
            f"{error:.3g}); a layer must be fully described by its constructor arguments and its "
            "state_dict (register tensors it needs as buffers or parameters)"
        )
        return twin

    def invertible(
        self, flow: Handle, x: torch.Tensor, name: str, y: torch.Tensor | None = None
    ) -> None:
        twin = self.faithful_twin(flow, x, name)
        starts = {"forward": x, "inverse": fresh_points(x if y is None else y, f"{name}/inv")}
        for first, second in (DIRECTIONS, DIRECTIONS[::-1]):
            start = starts[first]
            out, _ = self.outputs(flow, first, start, name)
            back, _ = self.outputs(twin, second, out.to(x.dtype), f"{name} ({TWIN})")
            error = max_error(back, start)
            assert error < self.tol, (
                f"{name}: {MAPS[second]}({MAPS[first]}(v)) should give back v; the largest "
                f"difference is {error:.3g} (expected < {self.tol:.0e}; {MAPS[second]} was "
                f"asked of {TWIN})"
            )

    def log_det_matches_jacobian(
        self,
        flow: Handle,
        x: torch.Tensor,
        name: str,
        y: torch.Tensor | None = None,
        directions: Iterable[str] = DIRECTIONS,
    ) -> None:
        """Each log|det J| against the Jacobian measured here by finite differences (float64)."""
        for direction in directions:
            at = x if direction == "forward" or y is None else y
            _, log_abs_det = self.outputs(flow, direction, at, name)
            method, label = getattr(flow, direction), f"{name}.{direction}"
            J = jacobians(lambda v, m=method, label=label: _first(m(v), label), at)
            expected = log_abs_dets(J)
            for i in range(at.shape[0]):
                got = float(log_abs_det[i])
                assert abs(got - float(expected[i])) < self.jacobian_tol, (
                    f"{label}: the log|det J_{MAPS[direction]}| of sample {i} should equal "
                    f"log|det| of its Jacobian, {float(expected[i]):.6f} (measured by finite "
                    f"differences); got {got:.6f}"
                )

    def log_dets_negate(self, flow: Handle, z: torch.Tensor, name: str) -> None:
        twin = self.twin(flow)
        x, forward = self.outputs(flow, "forward", z, name)
        _, inverse = self.outputs(twin, "inverse", x.to(z.dtype), f"{name} ({TWIN})")
        error = max_error(forward, -inverse)
        assert error < self.tol, (
            f"{name}: log|det J_f(z)| and log|det J_{{f^{{-1}}}}(f(z))| should be opposite "
            f"numbers; their sum is up to {float((forward + inverse).abs().max()):.3g} "
            f"(forward {float(forward[0]):.4f}, inverse {float(inverse[0]):.4f} for sample 0)"
        )

    def batch_independent(
        self, flow: Handle, x: torch.Tensor, name: str, y: torch.Tensor | None = None
    ) -> None:
        """A sample's outputs are the same in the worker's batch, alone in the twin, and among
        other samples in the twin (rows the twin has not seen before each question)."""
        twin = self.twin(flow)
        for direction in DIRECTIONS:
            at = x if direction == "forward" or y is None else y
            others = fresh_points(at, f"{name}/others/{direction}")
            out, log_det = self.outputs(flow, direction, at, name)
            contexts = [("alone", at[:1], 0)]
            if at.shape[0] > 1:
                contexts.append(("among other samples", torch.cat([at[1:2], others[1:]]), 1))
            for how, batch, row in contexts:
                label = f"{name} ({TWIN})"
                got, got_det = self.outputs(twin, direction, batch, label)
                leak = max_error(got[:1], out[row : row + 1])
                assert leak <= self.tol, (
                    f"{name}.{direction}: each sample must be transformed on its own, but sample "
                    f"{row}'s output changed by {leak:.3g} when it was transformed {how}"
                )
                error = max_error(got_det[:1], log_det[row : row + 1])
                assert error <= self.tol, (
                    f"{name}.{direction}: the log|det J| of a sample should not depend on the "
                    f"rest of the batch; in a batch {float(log_det[row]):.4f}, {how} "
                    f"{float(got_det[0]):.4f}"
                )

    def cheap(
        self,
        flow: Handle,
        x: torch.Tensor,
        name: str,
        directions: Iterable[str] = DIRECTIONS,
        allowed: Iterable[str] = (),
    ) -> None:
        """No determinant, inverse or autograd Jacobian on a wide layer (as the worker saw it)."""
        for direction in directions:
            out, names = remote.trace(getattr(flow, direction), x)
            expect_pair(out, f"{name}.{direction}", *x.shape)
            names = names if isinstance(names, list) else []
            expensive = sorted(set(map(str, names)) & (EXPENSIVE_CALLS - set(allowed)))
            assert not expensive, (
                f"{name}.{direction} with {x.shape[1]} features should get its log|det J| from "
                f"the triangular structure in O(d); it called {', '.join(expensive)}"
            )

    def gradients(
        self, flow: Handle, x: torch.Tensor, name: str, directions: Iterable[str] = DIRECTIONS
    ) -> None:
        assert self.probes is not None, "BijectionChecks.gradients needs the probes module"
        for direction in directions:
            method = getattr(flow, direction)
            for output, of in ((0, "the output"), (1, "log|det J|")):
                what = f"{name}.{direction}"
                expect_gradients(self.probes, method, flow, (x,), what, of, output)


def _first(out: Any, label: str) -> torch.Tensor:
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{label} should return a pair (output, log|det J|), got {kind(out)}"
    )
    return expect_tensor(out[0], f"the output of {label}", finite=True)
