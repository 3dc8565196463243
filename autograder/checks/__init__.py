"""The check framework of the hidden suites: values, Jacobians, bijection checks, layer cases.

The hidden suites (``tests/hidden/<assignment>/test_<part>.py``) import from here, never from
their conftest. Everything runs in the harness; student objects are handles into the sandboxed
worker (:mod:`autograder.grading.remote`), and every value that comes back is data, checked.

Values (:mod:`.values`)
    ``expect_tensor(value, what, shape=None, *, finite=False)``,
    ``expect_pair(out, what, batch, features, *, finite=True)`` (a flow's ``(output,
    log|det J|)``; NaN/inf fails first), ``expect_finite(t, what)``, ``max_error(a, b)`` (NaN
    stays NaN, so neither "equal" nor "changed" credits it), ``kind(value)``.
Jacobians (:mod:`.jacobians`)
    ``jacobians(fn, x)``: per-sample ``(batch, d_out, d_in)`` central differences in float64 of
    a worker map, measured here; ``log_abs_dets(J)``.
Gradients (:mod:`.gradients`)
    ``expect_gradients(probes, fn, module, args, what, of, output=None)``: autograd's gradient
    in the worker against finite differences measured here.
Bijections (:mod:`.bijection`)
    ``BijectionChecks(tol, jacobian_tol, evaluator, probes=None)`` with ``invertible``,
    ``log_det_matches_jacobian``, ``log_dets_negate``, ``batch_independent``,
    ``cheap(..., allowed=...)``, ``gradients``, each ``(flow, x, name, ...)``; the second
    direction of every round trip runs in the layer's twin, rebuilt in the part's evaluation
    worker (``remote.rebuild``), and inverse-first trips start at fresh points
    (``fresh_points``). ``EXPENSIVE_CALLS``.
Layer cases (:mod:`.cases`)
    ``LayerCase(name, build, features, ...)`` with ``.layer(modules, dtype)`` and
    ``.inputs(key, dtype)``; ``Modules(session)`` (``modules.coupling``...),
    ``student_module(session, part)``.

The hidden conftest provides the fixtures ``worker`` (the main worker), ``evaluator`` (the
part's evaluation worker: a second session on the same submission, one per part, sharing the
test's deadline), ``modules`` (a :class:`Modules` of the main worker), ``check`` (a
:class:`BijectionChecks` on the evaluator), ``probes``, ``tol``, ``jacobian_tol``, ``dtype``.

Rules for a check written here: finite outputs first; never send a worker a tensor it
produced (ask the twin, or use points the harness chose); a verdict that rests on what the
worker says about itself (a trace, a count) gets few points and a value check beside it.
"""

from autograder.checks.bijection import EXPENSIVE_CALLS, BijectionChecks, fresh_points
from autograder.checks.cases import LayerCase, Modules, student_module
from autograder.checks.gradients import expect_gradients
from autograder.checks.jacobians import jacobians, log_abs_dets
from autograder.checks.values import expect_finite, expect_pair, expect_tensor, kind, max_error

__all__ = [
    "EXPENSIVE_CALLS",
    "BijectionChecks",
    "LayerCase",
    "Modules",
    "expect_finite",
    "expect_gradients",
    "expect_pair",
    "expect_tensor",
    "fresh_points",
    "jacobians",
    "kind",
    "log_abs_dets",
    "max_error",
    "student_module",
]
