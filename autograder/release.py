"""The two bundles that leave the repository: the students' and, after the due date, the TAs'.

Both are written into a new (or empty) folder, scanned once written, and removed again if the
scan finds what must not be there: a hidden suite, a hidden-test marker, or (in the students'
bundle) a solution marker.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autograder.build import build_assignment, render, walk_files
from autograder.config import COURSE_FILE, Assignment
from autograder.errors import AutograderError
from autograder.markers import marker_lines, solution_text

# Decides, for one marker line found in a released file, whether it is a leak.
LeakRule = Callable[[str, str], bool]


def release_student(assignment: Assignment, out: Path) -> None:
    """Copy the committed release ``assignments/<name>`` into ``out``, if it is up to date.

    What students get is exactly what is committed, so a stale release (solutions edited, build
    not re-run) is refused rather than rebuilt silently.
    """
    with _fresh_output(out):
        drift = build_assignment(assignment, check=True)
        if drift:
            raise AutograderError(
                f"{assignment.release_dir} is out of date with {assignment.solution_dir} "
                f"({', '.join(drift)}); run: autograder build {assignment.name}"
            )
        for relative, path in walk_files(assignment.release_dir).items():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / relative)
        _refuse_leaks(assignment, out, _student_leak)


def release_solutions(
    assignment: Assignment, out: Path, force: bool, now: dt.datetime | None = None
) -> None:
    """Write the solutions bundle: reference modules without their marker lines, the given files,
    the public tests, the handout and nbgrader's solution notebook. Never the hidden suites.

    Refused before the due date in ``course.yml`` unless ``force``.
    """
    now = dt.datetime.now(dt.timezone.utc) if now is None else now
    if now < assignment.due and not force:
        raise AutograderError(
            f"{COURSE_FILE}: assignments.{assignment.name}.due is {assignment.due.isoformat()}: "
            "solutions are released after it (pass --force to release them now)"
        )
    with _fresh_output(out):
        render(assignment, out, solution_text, _solution_notebook)
        _refuse_leaks(assignment, out, _solutions_leak)


def _student_leak(relative: str, marker: str) -> bool:
    return True  # students see no marker of any kind


def _solutions_leak(relative: str, marker: str) -> bool:
    # nbgrader's solution notebook keeps its solution markers (harmless there); hidden tests
    # never leave the repository, and the modules lose their marker lines.
    return "HIDDEN" in marker.upper() or relative.endswith(".py")


def _refuse_leaks(assignment: Assignment, out: Path, is_leak: LeakRule) -> None:
    """Scan every file written; raise naming the first leak (the caller removes ``out``)."""
    hidden_files = walk_files(assignment.hidden_tests_dir).values()
    hidden = {path.read_bytes() for path in hidden_files} - {b""}  # an empty file is no secret
    for relative, path in walk_files(out).items():
        data = path.read_bytes()
        if "hidden" in Path(relative).parts or data in hidden:
            raise AutograderError(f"{out}: refusing to release {relative}: it is a hidden test")
        for line, marker in marker_lines(data.decode("utf-8", errors="replace")):
            if is_leak(relative, marker):
                raise AutograderError(
                    f"{out}: refusing to release {relative}: line {line} has {marker!r}"
                )


@contextmanager
def _fresh_output(out: Path) -> Iterator[None]:
    """Write into ``out``, which must not exist or be empty; on any failure leave it as found."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutograderError(f"{out}: output folder exists and is not empty (choose a new one)")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise


def _solution_notebook(assignment: Assignment, dest: Path) -> Path:
    # nbgrader is heavy; import it only when the assignment has a notebook to release.
    from autograder.notebook import solution_notebook

    return solution_notebook(assignment, dest)
