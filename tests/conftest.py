"""Fixtures shared by the repository's own tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from autograder.config import Assignment, Course, Limits, load_course

if TYPE_CHECKING:
    from autograder.grading.remote import Session

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


def sandboxed_pair(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, str], limits: Limits, slot: int
) -> Iterator[tuple[Session, Session]]:
    """Two sandboxed workers (:class:`autograder.grading.remote.Session`, slots ``slot`` and
    ``slot + 1``) on the reference's ``flows/`` with ``files`` added (name -> source), under
    the best backend here (skips without one); for a module fixture to ``yield from``. The
    second plays the evaluation worker of :mod:`autograder.checks`."""
    from autograder.config import PACKAGE
    from autograder.errors import AutograderError
    from autograder.grading import sandbox
    from autograder.grading.remote import Session

    try:
        backend = sandbox.choose("auto")
    except AutograderError as exc:
        pytest.skip(f"no sandbox here: {exc}")
    workspace = tmp_path_factory.mktemp("workspace")
    shutil.copytree(REPO / "solutions" / ASSIGNMENT / PACKAGE, workspace / PACKAGE)
    for name, source in files.items():
        (workspace / PACKAGE / name).write_text(source)
    made = [
        Session(backend, workspace, tmp_path_factory.mktemp(f"base{i}"), limits, slot=slot + i)
        for i in range(2)
    ]
    for session in made:
        session.launch()
    try:
        yield made[0], made[1]
    finally:
        for session in made:
            session.close()
