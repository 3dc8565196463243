"""Fixtures shared by the repository's own tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autograder.config import Assignment, Course, load_course

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "normalizing_flows"

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def course() -> Course:
    """The repository's own ``course.yml``."""
    return load_course(REPO)


@pytest.fixture(scope="session")
def assignment(course: Course) -> Assignment:
    """The repository's assignment, as its ``course.yml`` describes it."""
    return course.assignment(ASSIGNMENT)


@pytest.fixture
def course_copy(tmp_path: Path) -> Path:
    """A scratch course: the repository's ``course.yml``, ``solutions/``, ``assignments/`` and
    hidden suites (``tests/hidden``), without the notebook.

    Tests that edit solutions or releases work here, never on the repository itself. The
    notebook is left out (nbgrader takes seconds per build; a course may have no notebook):
    the tests that run nbgrader use the repository's own files.
    """
    root = tmp_path / "course"
    junk = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".ipynb_checkpoints", "*.pyc")
    for folder in ("solutions", "assignments", "tests/hidden"):
        shutil.copytree(REPO / folder, root / folder, ignore=junk)
    shutil.copy(REPO / "course.yml", root / "course.yml")
    notebook = load_course(root).assignment(ASSIGNMENT).notebook
    for folder in ("solutions", "assignments"):
        if notebook is not None:
            (root / folder / ASSIGNMENT / notebook.file).unlink(missing_ok=True)
    return root


@pytest.fixture
def assignment_in(course_copy: Path) -> Assignment:
    """The assignment as ``course.yml`` in :func:`course_copy` describes it."""
    return load_course(course_copy).assignment(ASSIGNMENT)


@pytest.fixture
def autograder_cli() -> CliRunner:
    """Run ``python -m autograder ARGS...`` in ``cwd`` (default: the repository), as staff do."""

    def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "autograder", *map(str, args)]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)

    return run
