"""One nbgrader gradebook for the whole assignment: module parts and notebook side by side.

nbgrader's data model (``nbgrader.api``) is assignment -> notebooks -> grade cells, and a
submission's score is the sum of its grades (``Grade.score`` is ``manual_score`` when a grader
set one, else ``auto_score``). We fit the module parts into it as a second notebook:

    assignment "normalizing_flows"                      max = sum of parts + notebook points
      notebook "explore"   grade cells from the source notebook (nbgrader's generate_assignment)
      notebook "modules"   one autograded grade cell per part, ``max_score`` = the part's points

so formgrader and nbgrader's exporter show **one total per student**. Recording a submission
sets ``auto_score`` only, never ``manual_score``, so a TA's grade survives a re-grade; and a
re-grade with the same scores changes no row (``needs_manual_grade`` is raised only when an
automatic score *changes* under a manual one, the way nbgrader's ``SaveAutoGrades`` flags it).
Each submission is written in one transaction, so a crash between two loses neither.

The database is SQLite at ``<repo>/gradebook.db`` unless a SQLAlchemy URL is given (``--db``),
e.g. PostgreSQL for several graders at once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.grading import atomic
from autograder.grading.extensions import GradedSubmission
from autograder.grading.scoring import NOTEBOOK_PART
from autograder.nbgrader_db import (
    create_database,
    database_exists,
    database_url,
    has_tables,
    sqlite_path,
)
from autograder.notebook import has_notebook, notebook_id, register_notebook

MODULES_NOTEBOOK = "modules"
RECEIPT = "gradebook.json"  # in ``out/<name>/``: what the sink last recorded, and where
ROSTER_COLUMNS = ("id", "first_name", "last_name", "email")  # nbgrader db student import


@contextmanager
def open_gradebook(course: Course, db_url: str | None = None, *, create: bool = True) -> Iterator:
    """nbgrader's :class:`~nbgrader.api.Gradebook` for the course (created when missing, unless
    ``create`` is false: then a missing database is a one-line error)."""
    from nbgrader.api import Gradebook

    url = database_url(course, db_url)
    if not create and not database_exists(url):
        raise AutograderError(f"{sqlite_path(url)}: no gradebook database (grade first, or --db)")
    try:
        if create:
            create_database(url)
        elif not has_tables(url):
            raise AutograderError(f"gradebook {_shown(url)}: empty (grade first, or another --db)")
        gradebook = Gradebook(url, course.id)
    except AutograderError:
        raise
    except Exception as exc:  # a bad URL or an unreachable server: one line, not a traceback
        raise AutograderError(f"gradebook {_shown(url)}: cannot open ({exc})") from None
    try:
        yield gradebook
    finally:
        gradebook.close()


def import_roster(gradebook, roster: Path) -> int:
    """Add or update the students of a roster CSV (``id,first_name,last_name,email``, as
    ``nbgrader db student import`` reads it); returns how many."""
    try:
        with roster.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise AutograderError(f"{roster}: cannot read the roster ({exc.strerror})") from None
    for number, row in enumerate(rows, start=2):
        student = (row.get("id") or "").strip()
        if not student:
            raise AutograderError(f"{roster}:{number}: a student without an id")
        extra = {key: row[key] or None for key in ROSTER_COLUMNS[1:] if key in row}
        gradebook.update_or_create_student(student, **extra)
    return len(rows)


def prepare_assignment(course: Course, assignment: Assignment, db_url: str | None = None) -> None:
    """Make the assignment's structure exist in the gradebook: the explore notebook's cells
    (through nbgrader's ``generate_assignment``), the ``modules`` notebook, the roster.

    Idempotent; run once per batch, before any submission is recorded.
    """
    with open_gradebook(course, db_url) as gradebook:
        gradebook.update_or_create_assignment(assignment.name, duedate=assignment.due)
        if course.roster is not None:
            import_roster(gradebook, course.roster)
        gradebook.update_or_create_notebook(MODULES_NOTEBOOK, assignment.name)
        for part, points in assignment.parts.items():
            gradebook.update_or_create_grade_cell(
                part, MODULES_NOTEBOOK, assignment.name, max_score=points, cell_type="code"
            )
    if has_notebook(assignment):
        register_notebook(course, assignment, database_url(course, db_url))


@dataclass(frozen=True)
class Scores:
    """One submission's automatic scores: ``(notebook, grade cell) -> points`` (``None``:
    waiting for a grader)."""

    student: str
    cells: Mapping[tuple[str, str], float | None]


def record(
    course: Course, assignment: Assignment, scores: Scores, db_url: str | None = None
) -> None:
    """Write one submission's scores in one transaction (see the module docstring)."""
    with open_gradebook(course, db_url) as gradebook:
        _ensure_submission(gradebook, assignment, scores.student)
        session = gradebook.db
        try:
            for (notebook, cell), auto_score in scores.cells.items():
                grade = gradebook.find_grade(cell, notebook, assignment.name, scores.student)
                _set_auto_score(grade, auto_score)
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _ensure_submission(gradebook, assignment: Assignment, student: str) -> None:
    from nbgrader.api import MissingEntry
    from sqlalchemy.exc import SAWarning

    try:
        gradebook.find_student(student)
    except MissingEntry:
        gradebook.add_student(student)  # not on the roster: created on first grade
    # nbgrader mirrors the assignment's notebooks and cells into a new submission's grades;
    # its way of building them makes SQLAlchemy 2 warn about autoflush (harmless).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=SAWarning)
        gradebook.update_or_create_submission(assignment.name, student)


def _set_auto_score(grade, auto_score: float | None) -> None:
    if grade.auto_score == auto_score:
        return  # a re-grade that changes nothing writes nothing
    grade.auto_score = auto_score
    # As SaveAutoGrades: a changed automatic score under a manual one needs a grader's look.
    grade.needs_manual_grade = grade.manual_score is not None or auto_score is None


class GradebookSink:
    """The batch sink: records each graded submission (idempotent; safe from many threads).

    Nothing is opened until a submission needs writing: nbgrader (seconds to import) and the
    assignment's structure (:func:`prepare_assignment`) come with the first record, once per
    batch. Each record leaves a receipt in ``out/<name>/`` (a digest of the database URL and the
    scores); a *resumed* submission whose receipt matches is skipped, so a batch that only
    resumes never loads nbgrader. A deleted SQLite file is filled again; a database emptied
    under the same URL is not noticed (delete the receipts, or grade into a fresh ``--out``).
    """

    def __init__(self, course: Course, assignment: Assignment, db_url: str | None = None) -> None:
        self.course, self.assignment = course, assignment
        self.url = database_url(course, db_url)
        self._lock = threading.Lock()  # SQLite takes one writer at a time; one prepare per batch
        self._prepared = False

    def __call__(self, graded: GradedSubmission) -> None:
        if graded.key is None:
            return  # not graded (unreadable submission): it is retried on the next run
        scores = scores_of(self.assignment, graded)
        receipt = {"gradebook": _digest(self.url, scores)}
        path = graded.out_dir / RECEIPT
        if graded.resumed and _read_json(path) == receipt and database_exists(self.url):
            return
        with self._lock:
            if not self._prepared:
                prepare_assignment(self.course, self.assignment, self.url)
                self._prepared = True
            record(self.course, self.assignment, scores, self.url)
        atomic.write_json(path, receipt)


def _digest(url: str, scores: Scores) -> str:
    """Of the URL too, so another ``--db`` records again; hashed, as a URL may hold a password."""
    cells = sorted([notebook, cell, points] for (notebook, cell), points in scores.cells.items())
    return hashlib.sha256(json.dumps([url, scores.student, cells]).encode()).hexdigest()


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def scores_of(assignment: Assignment, graded: GradedSubmission) -> Scores:
    """Gradebook scores of a :class:`~autograder.grading.extensions.GradedSubmission`: each graded
    module part's points, and each notebook cell's (its outcome's weight is its points)."""
    cells: dict[tuple[str, str], float | None] = {}
    for part, score in graded.score.parts.items():
        if part != NOTEBOOK_PART and score.graded:
            cells[MODULES_NOTEBOOK, part] = score.earned
    notebook = graded.score.parts.get(NOTEBOOK_PART)
    if notebook is not None and notebook.graded:
        name = notebook_id(assignment)
        for test in notebook.tests:
            outcome = test.outcome
            cell = outcome.nodeid.split("::", 1)[1]
            points = outcome.weight if outcome.passed else 0.0
            cells[name, cell] = None if outcome.status == "pending" else points
    return Scores(graded.name, cells)


def export_csv(course: Course, out: Path, db_url: str | None = None) -> None:
    """Write the gradebook to ``out`` with nbgrader's own CSV exporter (its columns: assignment,
    duedate, timestamp, student_id, last_name, first_name, email, raw_score,
    late_submission_penalty, score, max_score)."""
    from nbgrader.plugins.export import CsvExportPlugin

    with open_gradebook(course, db_url, create=False) as gradebook:
        out.parent.mkdir(parents=True, exist_ok=True)
        CsvExportPlugin(to=str(out)).export(gradebook)


def _shown(url: str) -> str:
    """The URL as an error message may show it: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: shown as given
        return url
