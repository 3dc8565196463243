"""The explore notebook on nbgrader's side: its configuration and its two released versions.

Everything here runs nbgrader's own converters in a throw-away *course directory* laid out the
way nbgrader expects::

    <course>/source/<assignment>/explore.ipynb            the TA's source (solutions, hidden tests)
    <course>/release/<assignment>/explore.ipynb           GenerateAssignment: the student version
    <course>/solution/<assignment>/explore.ipynb          GenerateSolution: the solution version
    <course>/gradebook.db                                  nbgrader's database for that run

The grading side (nbgrader's ``autograde`` of a student's notebook, in the same layout) is the
batch stage :mod:`autograder.grading.notebook_stage`; it builds on :func:`nbgrader_config` and
:func:`course_directory` here.

nbgrader and nbformat are imported inside the functions that use them: importing them costs
seconds (``jsonschema`` builds its format checkers), which a command that never touches a
notebook, or a batch that only resumes, must not pay.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from traitlets.config import Config

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.nbgrader_db import GRADEBOOK_FILE, create_database

if TYPE_CHECKING:
    from nbformat import NotebookNode

PART_TAG = "part:"  # a cell tagged "part:iaf" belongs to that part: left out where it is not
_log = logging.getLogger("autograder.nbgrader")
_log.setLevel(logging.ERROR)  # nbgrader narrates every copy at INFO/WARNING


def has_notebook(assignment: Assignment) -> bool:
    """Whether the assignment has a notebook in ``course.yml`` and its source exists."""
    notebook = assignment.notebook
    return notebook is not None and (assignment.solution_dir / notebook.file).is_file()


def notebook_file(assignment: Assignment) -> str:
    """The notebook's file name (``explore.ipynb``); an error when ``course.yml`` has none."""
    if assignment.notebook is None:
        raise AutograderError(f"course.yml: assignments.{assignment.name} has no notebook")
    return assignment.notebook.file


def notebook_id(assignment: Assignment) -> str:
    """nbgrader's name of the notebook: its file stem (``explore``)."""
    return Path(notebook_file(assignment)).stem


def nbgrader_config(
    course: Course, assignment: Assignment, root: Path, db_url: str | None = None
) -> Config:
    """nbgrader's configuration for ``assignment``, generated from ``course.yml``.

    ``root`` is the nbgrader course directory; the database defaults to ``<root>/gradebook.db``
    (SQLite) unless ``db_url`` (any SQLAlchemy URL) is given. Students come from the roster
    (``course.roster``) through :func:`autograder.gradebook.import_roster`, as nbgrader 0.9 takes
    them from its database rather than from its configuration.
    """
    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = course.id
    config.CourseDirectory.assignment_id = assignment.name
    config.CourseDirectory.notebook_id = notebook_id(assignment)
    config.CourseDirectory.db_url = db_url or f"sqlite:///{Path(root).resolve() / GRADEBOOK_FILE}"
    # Caches a notebook session leaves beside the package are not course files.
    config.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".*"]
    config.Execute.timeout = int(assignment.limits.test_timeout_s)
    config.Execute.interrupt_on_timeout = True
    return config


@contextmanager
def course_directory(assignment: Assignment) -> Iterator[Path]:
    """A temporary nbgrader course directory whose ``source/`` holds only the notebook (so
    nbgrader copies no other file over a student's)."""
    source = assignment.solution_dir / notebook_file(assignment)
    if not source.is_file():
        raise AutograderError(f"{source}: the assignment's notebook is missing")
    with tempfile.TemporaryDirectory(prefix=f"nbgrader-{assignment.name}-") as tmp:
        root = Path(tmp).resolve()
        target = root / "source" / assignment.name / source.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(source, target)
        _drop_unselected_cells(assignment, target)
        yield root


def _drop_unselected_cells(assignment: Assignment, path: Path) -> None:
    """Remove the cells tagged ``part:<name>`` of parts ``course.yml`` does not select (they
    import modules the release does not have); the file is left as is when none is dropped."""
    unselected = {f"{PART_TAG}{part}" for part in assignment.unselected_parts}
    if not unselected:
        return
    import nbformat

    nb = nbformat.read(path, as_version=4)
    kept = [c for c in nb.cells if not unselected & set(c.metadata.get("tags", []))]
    if len(kept) < len(nb.cells):
        nb.cells = kept
        nbformat.write(nb, path)


def run_converter(converter_class: type, config: Config, assignment: Assignment, what: str) -> None:
    """Run one nbgrader converter with ``config`` (its database created fast, the assignment
    in it); nbgrader's failure becomes an :class:`AutograderError` naming ``what``."""
    from nbgrader.api import Gradebook
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    url = config.CourseDirectory.db_url
    create_database(url)
    with Gradebook(url, config.CourseDirectory.course_id) as gradebook:
        gradebook.update_or_create_assignment(assignment.name, duedate=assignment.due)
    coursedir = CourseDirectory(config=config, log=_log)
    converter = converter_class(coursedir=coursedir, config=config, log=_log)
    try:
        converter.start()
    except NbGraderException as exc:
        raise AutograderError(f"nbgrader {what}: {exc}") from None


# --- the released versions ------------------------------------------------------------------


def release_notebook(assignment: Assignment, dest_dir: Path) -> Path:
    """Write the student notebook into ``dest_dir`` through nbgrader's ``generate_assignment``.

    Solution regions become ``raise NotImplementedError()`` / "YOUR ANSWER HERE", hidden test
    regions are removed, grade cells get locked with checksums. Deterministic: the same source
    gives the same bytes.
    """
    from nbgrader.converters import GenerateAssignment

    return _generate(assignment, dest_dir, GenerateAssignment, "release")


def solution_notebook(assignment: Assignment, dest_dir: Path) -> Path:
    """Write the solution notebook into ``dest_dir`` through nbgrader's ``generate_solution``.

    nbgrader's pipeline is configured to clear the hidden tests (``ClearHiddenTests``) and not
    to execute the notebook: the bundle ships it clean, to be run beside the solution modules.
    """
    from nbgrader.converters import GenerateSolution
    from nbgrader.preprocessors import (
        ClearHiddenTests,
        ClearMarkScheme,
        ClearOutput,
        IncludeHeaderFooter,
        LockCells,
    )

    extra = Config()
    extra.GenerateSolution.preprocessors = [
        IncludeHeaderFooter,
        LockCells,
        ClearOutput,
        ClearMarkScheme,
        ClearHiddenTests,
    ]
    return _generate(assignment, dest_dir, GenerateSolution, "solution", extra)


def _generate(
    assignment: Assignment,
    dest_dir: Path,
    converter_class: type,
    step: str,
    extra: Config | None = None,
) -> Path:
    course = _course_of(assignment)
    name = notebook_file(assignment)
    with course_directory(assignment) as root:
        config = nbgrader_config(course, assignment, root)
        if extra is not None:
            config.merge(extra)
        run_converter(converter_class, config, assignment, f"{step} {name}")
        produced = root / step / assignment.name / name
        dest = Path(dest_dir) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced, dest)  # copyfile: nbgrader's read-only mode stays behind
    return dest


def register_notebook(course: Course, assignment: Assignment, db_url: str) -> None:
    """Record the notebook's grade cells in the gradebook at ``db_url`` the way nbgrader does
    (``generate_assignment``'s ``SaveCells``), for this notebook only: other notebooks of the
    assignment in that database (``modules``) are left alone."""
    from nbgrader.converters import GenerateAssignment

    with course_directory(assignment) as root:
        config = nbgrader_config(course, assignment, root, db_url=db_url)
        run_converter(GenerateAssignment, config, assignment, "generate_assignment")


def _course_of(assignment: Assignment) -> Course:
    from autograder.config import load_course

    return load_course(assignment.root)


# --- the graded cells -----------------------------------------------------------------------


@dataclass(frozen=True)
class GradeCell:
    """A graded cell of the source notebook: what nbgrader's metadata says about it."""

    grade_id: str
    points: float
    manual: bool  # a written answer (or solution cell), graded by hand in formgrader
    title: str


def grade_cells(assignment: Assignment) -> list[GradeCell]:
    """The graded cells of the source notebook, in notebook order."""
    import nbformat

    nb = nbformat.read(assignment.solution_dir / notebook_file(assignment), as_version=4)
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            manual = bool(meta.get("solution")) or cell.cell_type == "markdown"
            cells.append(GradeCell(meta["grade_id"], float(meta["points"]), manual, _title(cell)))
    return cells


def _title(cell: NotebookNode) -> str:
    """A cell's shown name: its first comment line (``# Test: ...``), else its grade id."""
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    if cell.cell_type == "code" and first.startswith("#"):
        return first.lstrip("# ").removeprefix("Test: ")
    return f"written answer {cell.metadata['nbgrader']['grade_id']}"
