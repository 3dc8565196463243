"""Self-check plumbing: import ``flows`` from this copy, short failures, a per-part summary.

* The assignment folder (the parent of ``tests/``) goes first on ``sys.path``, so the tests
  import *your* ``flows`` package.
* A function you have not written yet raises ``NotImplementedError("not implemented yet: ...")``;
  such a failure is reported as that one line instead of a traceback.
* At the end, a table gives the checks passed per part and the points at stake in that part.
  A part is the name of the file it checks: ``tests/test_coupling.py`` checks ``flows/coupling.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture
def perturb() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Give a module random parameters: fresh coupling and MAF layers are the identity."""

    def perturb(module: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in module.parameters():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_(std * noise)
        return module

    return perturb
