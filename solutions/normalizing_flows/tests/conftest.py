"""Self-check plumbing: import ``flows`` from this copy, short failures, a per-part summary.

* The assignment folder (the parent of ``tests/``) goes first on ``sys.path``, so the tests
  import *your* ``flows`` package.
* A function you have not written yet raises ``NotImplementedError("not implemented yet: ...")``;
  such a failure is reported as that one line instead of a traceback.
* At the end, a table gives the checks passed per part and the points at stake in that part.
  A part is the name of the file it checks: ``tests/test_coupling.py`` checks ``flows/coupling.py``.
* Every check starts from the same random state (``torch.manual_seed(0)``), so a check that
  passes once passes every time, whatever ran before it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
ASSIGNMENT_DIR = TESTS_DIR.parent
sys.path.insert(0, str(ASSIGNMENT_DIR))

NOT_IMPLEMENTED = "not implemented yet"
_passed: dict[str, bool] = {}  # test id -> did every phase of it pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if (
        report.failed
        and excinfo is not None
        and excinfo.errisinstance(NotImplementedError)
        and str(excinfo.value).startswith(NOT_IMPLEMENTED)
    ):
        report.longrepr = str(excinfo.value)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _passed[report.nodeid] = False
    elif report.when == "call":
        _passed.setdefault(report.nodeid, report.passed)


def _part(nodeid: str) -> str:
    """``tests/test_coupling.py::test_x`` -> ``coupling``."""
    return Path(nodeid.split("::")[0]).stem.removeprefix("test_")


def _points() -> dict[str, object]:
    """Points per part: ``tests/points.json`` in a release, else the repository's course.yml."""
    points_file = TESTS_DIR / "points.json"
    if points_file.is_file():
        return json.loads(points_file.read_text())
    course_file = TESTS_DIR.parents[2] / "course.yml"
    try:
        import yaml
    except ImportError:  # students need not have pyyaml; the table then shows "-"
        return {}
    try:
        course = yaml.safe_load(course_file.read_text())
        return dict(course["assignments"][ASSIGNMENT_DIR.name]["parts"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _passed:
        return
    parts: dict[str, list[bool]] = {}
    for nodeid, passed in _passed.items():
        parts.setdefault(_part(nodeid), []).append(passed)
    points = _points()
    width = max(len("part"), *(len(part) for part in parts))
    terminalreporter.section("self-check summary")
    terminalreporter.write_line(f"{'part':<{width}}  checks  points")
    for part, results in parts.items():
        checks = f"{sum(results)}/{len(results)}"
        terminalreporter.write_line(f"{part:<{width}}  {checks:>6}  {points.get(part, '-'):>6}")


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every check starts from the same random state: a fresh layer is the same every run."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def perturb() -> Callable[..., torch.nn.Module]:
    """Give a module random parameters: fresh coupling and MAF layers are the identity.

    Only trainable parameters are redrawn; a mask kept as a frozen parameter stays a mask.
    """

    def perturb(module: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in module.parameters():
                if parameter.requires_grad:
                    noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                    parameter.copy_(std * noise)
        return module

    return perturb


# Calls that cost more than O(d) per sample: a determinant, an inverse, or a Jacobian by autograd
# (reverse mode calls ``grad``, forward mode ``_make_dual``).
EXPENSIVE_CALLS = frozenset(
    {
        "det",
        "logdet",
        "slogdet",
        "linalg_det",
        "linalg_slogdet",
        "inverse",
        "linalg_inv",
        "linalg_inv_ex",
        "linalg_solve",
        "linalg_pinv",
        "pinverse",
        "linalg_eig",
        "linalg_eigvals",
        "linalg_lu",
        "linalg_lu_factor",
        "grad",
        "backward",
        "jacobian",
        "vjp",
        "jvp",
        "_make_dual",
    }
)


class ExpensiveCall(Exception):
    """Raised by :class:`RefuseExpensiveCalls` at the first determinant or Jacobian."""


class RefuseExpensiveCalls(torch.overrides.TorchFunctionMode):
    """Inside its ``with`` block, the first call of a determinant, an inverse or an autograd
    Jacobian raises :class:`ExpensiveCall` naming it.

    Stopping at the first such call (rather than recording it and going on) keeps a wrong layer
    from spending minutes and gigabytes on a 2048 x 2048 Jacobian per sample.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        if name in EXPENSIVE_CALLS:
            raise ExpensiveCall(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def assert_cheap_log_det() -> Callable[..., Any]:
    """``assert_cheap_log_det(flow, direction, x, name)``: run ``flow.<direction>(x)`` and fail,
    in the lesson's terms, if it computes a determinant or a Jacobian on the way."""

    def check(flow: torch.nn.Module, direction: str, x: torch.Tensor, name: str) -> Any:
        try:
            with RefuseExpensiveCalls():
                return getattr(flow, direction)(x)
        except ExpensiveCall as call:
            refused = str(call)
        # Outside the except block, so the report is this one message and no chained exception.
        pytest.fail(
            f"{name}.{direction} with {x.shape[-1]} features called torch's {refused} "
            "(a determinant, an inverse or an autograd Jacobian). Its Jacobian is "
            "triangular: log|det J| is the sum of the log-scales it already computed, "
            "O(d) per sample, with no d x d matrix at all.",
            pytrace=False,
        )

    return check
