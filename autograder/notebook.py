"""nbgrader for the explore notebook: its configuration, its two released versions, its autograde.

Everything here runs nbgrader's own converters in a throw-away *course directory* laid out the
way nbgrader expects::

    <course>/source/<assignment>/explore.ipynb            the TA's source (solutions, hidden tests)
    <course>/release/<assignment>/explore.ipynb           GenerateAssignment: the student version
    <course>/solution/<assignment>/explore.ipynb          GenerateSolution: the solution version
    <course>/submitted/<student>/<assignment>/...         a student's notebook + their ``flows/``
    <course>/autograded/<student>/<assignment>/...        Autograde: executed, with grades
    <course>/gradebook.db                                  nbgrader's database for that run

**Autograde and isolation.** nbgrader executes the student's notebook in a Jupyter kernel (a
subprocess) with a per-cell timeout (``Execute.timeout`` = ``limits.test_timeout_s``). We run
the whole autograde in a child process of its own (nbgrader ``chdir``-s, which a threaded batch
must not see) in a new session, with an address-space cap (``limits.memory_mb``) that the kernel
inherits, one BLAS thread, and a wall-clock bound (``limits.submission_timeout_s``) after which
the child's whole process group (kernel included) is killed. The kernel runs as the grading user
with no audit hook or network block: a notebook can read what that user can read. The child's
database is private to the submission; :mod:`autograder.gradebook` copies the scores into the
course's gradebook (one transaction per submission).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
from traitlets.config import Config

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.grading.models import TestOutcome
from autograder.grading.scoring import NOTEBOOK_PART

if TYPE_CHECKING:
    from autograder.grading.batch import StageContext

GRADEBOOK_FILE = "gradebook.db"
PACKAGE = "flows"
PENDING = "graded by hand by a TA (pending)"

_log = logging.getLogger("autograder.nbgrader")
_log.setLevel(logging.ERROR)  # nbgrader narrates every copy at INFO/WARNING


def has_notebook(assignment: Assignment) -> bool:
    """Whether the assignment has a notebook in ``course.yml`` and its source exists."""
    notebook = assignment.notebook
    return notebook is not None and (assignment.solution_dir / notebook.file).is_file()


def notebook_id(assignment: Assignment) -> str:
    """nbgrader's name of the notebook: its file stem (``explore``)."""
    return Path(_notebook(assignment).file).stem


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
    name = _notebook(assignment).file
    with _course_directory(assignment) as root:
        config = nbgrader_config(course, assignment, root)
        if extra is not None:
            config.merge(extra)
        _convert(converter_class, config, assignment, f"{step} {name}")
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

    with _course_directory(assignment) as root:
        config = nbgrader_config(course, assignment, root, db_url=db_url)
        _convert(GenerateAssignment, config, assignment, "generate_assignment")


def _convert(converter_class: type, config: Config, assignment: Assignment, what: str) -> None:
    """Run one nbgrader converter with ``config`` (its database created fast, the assignment
    in it)."""
    from nbgrader.api import Gradebook
    from nbgrader.converters.base import NbGraderException
    from nbgrader.coursedir import CourseDirectory

    from autograder.gradebook import create_database

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


# --- autograde ------------------------------------------------------------------------------


def find_submitted_notebook(assignment: Assignment, submission: Path) -> bytes | None:
    """The notebook's bytes in a submission (folder or zip): at its top, or one folder down
    beside ``flows/``; ``None`` when there is none."""
    name = _notebook(assignment).file
    if submission.is_dir():
        names = {p.relative_to(submission).as_posix() for p in _two_levels(submission, name)}
    else:
        try:
            with zipfile.ZipFile(submission) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return None
    found = _notebook_path(names, name)
    if found is None:
        return None
    # The unpacker reads zips and folders defensively (sizes, links, paths); reuse it.
    from autograder.grading.unpack import collect_submission

    return collect_submission(submission, [found]).files.get(found)


def autograde(
    course: Course,
    assignment: Assignment,
    notebook: bytes,
    workspace: Path,
    student: str,
    *,
    keep: Path | None = None,
) -> list[TestOutcome]:
    """Run nbgrader's ``autograde`` on a student's notebook; one outcome per graded cell.

    ``workspace`` holds the ``flows/`` package to import (the course's given files with the
    student's files). Autograded test cells pass or fail with their points as weight; written
    answers are ``pending`` (graded by hand in formgrader), or ``failed`` when left untouched.
    ``keep``: a folder to copy the executed, graded notebook into (for staff).
    """
    from nbgrader.api import Gradebook, MissingEntry

    name = _notebook(assignment).file
    with _course_directory(assignment) as root:
        submitted = root / "submitted" / student / assignment.name
        shutil.copytree(workspace / PACKAGE, submitted / PACKAGE)
        (submitted / name).write_bytes(notebook)
        error = _autograde_in_child(course, assignment, root, student)
        graded = root / "autograded" / student / assignment.name / name
        if keep is not None and graded.is_file():
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(graded, keep / name)
        errors = _cell_errors(graded) if graded.is_file() else {}
        scores: dict[str, float | None] = {}
        if error is None:
            url = nbgrader_config(course, assignment, root).CourseDirectory.db_url
            with Gradebook(url) as gradebook:
                try:
                    nb = gradebook.find_submission_notebook(
                        notebook_id(assignment), assignment.name, student
                    )
                    scores = {grade.name: grade.auto_score for grade in nb.grades}
                except MissingEntry:
                    error = "nbgrader recorded no grades for the notebook"
    return [
        _outcome(assignment, cell, scores.get(cell.grade_id), errors, error)
        for cell in grade_cells(assignment)
    ]


def notebook_stage(context: StageContext) -> list[TestOutcome]:
    """The batch stage: autograde the submission's notebook, if it has one, against the
    prepared workspace (the course's given files + the student's)."""
    if context.parts is not None and NOTEBOOK_PART not in context.parts:
        return []
    notebook = find_submitted_notebook(context.assignment, context.submission)
    if notebook is None:
        return []
    return autograde(context.course, context.assignment, notebook, context.workspace, context.name)


class GradeCell:
    """A graded cell of the source notebook: what nbgrader's metadata says about it."""

    def __init__(self, grade_id: str, points: float, manual: bool, title: str) -> None:
        self.grade_id, self.points, self.manual, self.title = grade_id, points, manual, title


def grade_cells(assignment: Assignment) -> list[GradeCell]:
    """The graded cells of the source notebook, in notebook order."""
    nb = nbformat.read(assignment.solution_dir / _notebook(assignment).file, as_version=4)
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            manual = bool(meta.get("solution")) or cell.cell_type == "markdown"
            cells.append(GradeCell(meta["grade_id"], float(meta["points"]), manual, _title(cell)))
    return cells


def _outcome(
    assignment: Assignment,
    cell: GradeCell,
    score: float | None,
    errors: dict[str, str],
    error: str | None,
) -> TestOutcome:
    name = _notebook(assignment).file
    outcome = TestOutcome(
        nodeid=f"{name}::{cell.grade_id}",
        name=f"{name}: {cell.title}",
        part=NOTEBOOK_PART,
        weight=cell.points,
        status="failed",
    )
    if error is not None:
        outcome.status, outcome.message = "error", error
    elif cell.manual:
        if score is None:
            outcome.status, outcome.message = "pending", PENDING
        else:
            outcome.message = "no answer written (the cell is as released)"
    elif score is not None and score >= cell.points:
        outcome.status = "passed"
    else:
        outcome.message = errors.get(cell.grade_id, "the cell wrote to stderr or did not run")
    return outcome


def _autograde_in_child(
    course: Course, assignment: Assignment, root: Path, student: str
) -> str | None:
    """Run ``python -m autograder.notebook`` (below) bounded; ``None`` or what went wrong."""
    limits = assignment.limits
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    command = [sys.executable, "-m", "autograder.notebook", str(course.root), assignment.name]
    command += [str(root), student]
    child = subprocess.Popen(
        command,
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the kernel dies with it
    )
    try:
        output, _ = child.communicate(timeout=limits.submission_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return f"the notebook did not finish within {limits.submission_timeout_s:g} s"
    finally:
        _kill_group(child.pid)
    if child.returncode != 0:
        tail = output.decode("utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
        return f"nbgrader autograde failed: {tail[0]}"
    return None


def _kill_group(pid: int) -> None:
    # A kernel left behind (nbgrader normally shuts it down) must not outlive its notebook.
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _cell_errors(graded: Path) -> dict[str, str]:
    """``grade_id -> "Ename: value"`` for graded cells that raised; no traceback (it quotes
    the hidden tests' code)."""
    nb = nbformat.read(graded, as_version=4)
    errors: dict[str, str] = {}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        for output in cell.get("outputs", []):
            if grade_id and output.output_type == "error":
                errors[grade_id] = f"{output.ename}: {output.evalue}".strip()
    return errors


def _title(cell: nbformat.NotebookNode) -> str:
    """A cell's shown name: its first comment line (``# Test: ...``), else its grade id."""
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    if cell.cell_type == "code" and first.startswith("#"):
        return first.lstrip("# ").removeprefix("Test: ")
    return f"written answer {cell.metadata['nbgrader']['grade_id']}"


# --- helpers ------------------------------------------------------------------------------


def _notebook(assignment: Assignment):
    if assignment.notebook is None:
        raise AutograderError(f"course.yml: assignments.{assignment.name} has no notebook")
    return assignment.notebook


def _course_of(assignment: Assignment) -> Course:
    from autograder.config import load_course

    return load_course(assignment.root)


@contextmanager
def _course_directory(assignment: Assignment) -> Iterator[Path]:
    """A temporary nbgrader course directory whose ``source/`` holds only the notebook (so
    nbgrader copies no other file over a student's)."""
    source = assignment.solution_dir / _notebook(assignment).file
    if not source.is_file():
        raise AutograderError(f"{source}: the assignment's notebook is missing")
    with tempfile.TemporaryDirectory(prefix=f"nbgrader-{assignment.name}-") as tmp:
        root = Path(tmp).resolve()
        target = root / "source" / assignment.name / source.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(source, target)
        yield root


def _two_levels(folder: Path, name: str) -> list[Path]:
    return [p for p in (folder / name, *folder.glob(f"*/{name}")) if p.is_file()]


def _notebook_path(names: set[str], name: str) -> str | None:
    """``name`` at the top wins; else the one beside a ``flows/`` one folder down."""
    if name in names:
        return name
    nested = sorted(n for n in names if n.count("/") == 1 and n.endswith(f"/{name}"))
    beside = [
        n for n in nested if any(m.startswith(f"{n.split('/')[0]}/{PACKAGE}/") for m in names)
    ]
    return (beside or nested or [None])[0]


def _child_main(argv: list[str]) -> int:
    """``python -m autograder.notebook REPO ASSIGNMENT COURSE_DIR STUDENT``: generate the
    assignment in the course directory's database, then autograde the student's notebook."""
    from nbgrader.converters import Autograde, GenerateAssignment

    from autograder.config import load_course

    repo, name, root, student = argv
    course = load_course(Path(repo))
    assignment = course.assignment(name)
    memory = int(assignment.limits.memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # the kernel inherits it
    config = nbgrader_config(course, assignment, Path(root))
    _convert(GenerateAssignment, config, assignment, "generate_assignment")
    config.CourseDirectory.student_id = student
    _convert(Autograde, config, assignment, "autograde")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child_main(sys.argv[1:]))
    except AutograderError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
