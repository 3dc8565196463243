"""One nbgrader gradebook: module parts and notebook cells of each student, one total each.

Every check reads the database back through nbgrader's own ``Gradebook``. The recording tests
use hand-made scores on a gradebook prepared once (nbgrader's ``generate_assignment`` fills in
the notebook's cells, ~2 s); the sink tests feed the batch's sink hand-made graded submissions
(~6 s together); ``test_grading_two_students_fills_the_gradebook`` grades two real submissions
end to end (``slow``: the hidden suites plus the notebook's autograde, ~1-2 min).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from autograder.config import Assignment, Course
from autograder.gradebook import (
    MODULES_NOTEBOOK,
    RECEIPT,
    GradebookSink,
    Scores,
    export_csv,
    prepare_assignment,
    record,
)
from autograder.grading import models
from autograder.grading.batch import GradedSubmission
from autograder.grading.reports import SubmissionReport
from autograder.grading.scoring import score
from autograder.notebook import grade_cells, notebook_id
from tests.conftest import CliRunner

# nbgrader's CsvExportPlugin columns, in its order.
NBGRADER_CSV_COLUMNS = [
    "assignment",
    "duedate",
    "timestamp",
    "student_id",
    "last_name",
    "first_name",
    "email",
    "raw_score",
    "late_submission_penalty",
    "score",
    "max_score",
]


@pytest.fixture(scope="module")
def prepared(course: Course, assignment: Assignment, tmp_path_factory) -> Path:
    """A gradebook file with the assignment's structure, made once and copied per test."""
    path = tmp_path_factory.mktemp("gradebook") / "template.db"
    prepare_assignment(course, assignment, f"sqlite:///{path}")
    return path


@pytest.fixture
def db_url(prepared: Path, tmp_path: Path) -> str:
    path = tmp_path / "gradebook.db"
    shutil.copyfile(prepared, path)
    return f"sqlite:///{path}"


@pytest.fixture
def gradebook(course: Course, db_url: str) -> Iterator[Gradebook]:
    with Gradebook(db_url, course.id) as gb:
        yield gb


def scores_for(assignment: Assignment, student: str, fraction: float) -> Scores:
    """Each module part at ``fraction`` of its points; autograded cells passed, answers pending."""
    cells: dict[tuple[str, str], float | None] = {
        (MODULES_NOTEBOOK, part): fraction * points for part, points in assignment.parts.items()
    }
    for cell in grade_cells(assignment):
        cells[notebook_id(assignment), cell.grade_id] = None if cell.manual else cell.points
    return Scores(student, cells)


def grade_rows(gradebook: Gradebook, assignment: Assignment) -> list[tuple]:
    rows = []
    for submission in gradebook.find_assignment(assignment.name).submissions:
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                rows.append(
                    (
                        submission.student.id,
                        notebook.name,
                        grade.name,
                        grade.auto_score,
                        grade.manual_score,
                        grade.needs_manual_grade,
                    )
                )
    return sorted(rows, key=repr)


def test_structure_has_one_maximum_for_modules_and_notebook(
    gradebook: Gradebook, assignment: Assignment
) -> None:
    recorded = gradebook.find_assignment(assignment.name)
    assert {nb.name for nb in recorded.notebooks} == {MODULES_NOTEBOOK, notebook_id(assignment)}
    modules = gradebook.find_notebook(MODULES_NOTEBOOK, assignment.name)
    assert {cell.name: cell.max_score for cell in modules.grade_cells} == assignment.parts
    assert recorded.max_score == assignment.total_points


def test_totals_are_modules_plus_notebook(
    course: Course, assignment: Assignment, db_url: str, gradebook: Gradebook
) -> None:
    record(course, assignment, scores_for(assignment, "alice", 1.0), db_url)
    record(course, assignment, scores_for(assignment, "bob", 0.5), db_url)
    autograded = sum(cell.points for cell in grade_cells(assignment) if not cell.manual)
    modules = sum(assignment.parts.values())
    for student, fraction in (("alice", 1.0), ("bob", 0.5)):
        submission = gradebook.find_submission(assignment.name, student)
        assert submission.score == pytest.approx(fraction * modules + autograded)
        assert submission.max_score == assignment.total_points
        assert submission.needs_manual_grade  # the written answers wait for a TA


def test_manual_score_survives_a_regrade(
    course: Course, assignment: Assignment, db_url: str, gradebook: Gradebook
) -> None:
    scores = scores_for(assignment, "alice", 1.0)
    record(course, assignment, scores, db_url)
    answer = next(cell for cell in grade_cells(assignment) if cell.manual)
    grade = gradebook.find_grade(answer.grade_id, notebook_id(assignment), assignment.name, "alice")
    grade.manual_score = 1.5  # a TA grades the written answer in formgrader
    overridden = gradebook.find_grade("coupling", MODULES_NOTEBOOK, assignment.name, "alice")
    overridden.manual_score = 20.0  # ...and overrides a module part
    gradebook.db.commit()
    before = gradebook.find_submission(assignment.name, "alice").score

    lower = dict(scores.cells)
    lower[MODULES_NOTEBOOK, "maf"] = 0.0  # the re-grade finds a bug in maf
    record(course, assignment, replace(scores, cells=lower), db_url)
    gradebook.db.expire_all()
    assert grade.manual_score == 1.5 and overridden.manual_score == 20.0
    after = gradebook.find_submission(assignment.name, "alice").score
    assert after == pytest.approx(before - assignment.parts["maf"])


def test_regrading_the_same_submission_changes_nothing(
    course: Course, assignment: Assignment, db_url: str, gradebook: Gradebook
) -> None:
    scores = scores_for(assignment, "alice", 0.8)
    record(course, assignment, scores, db_url)
    grade = gradebook.find_grade("train", MODULES_NOTEBOOK, assignment.name, "alice")
    grade.manual_score = 5.0
    gradebook.db.commit()
    before = grade_rows(gradebook, assignment)
    record(course, assignment, scores, db_url)
    gradebook.db.expire_all()
    assert grade_rows(gradebook, assignment) == before


def test_roster_students_and_unknown_students(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text("id,first_name,last_name,email\nada,Ada,Lovelace,ada@example.org\n")
    url = f"sqlite:///{tmp_path / 'roster.db'}"
    prepare_assignment(replace(course, roster=roster), assignment, url)
    record(course, assignment, scores_for(assignment, "zed", 1.0), url)  # not on the roster
    with Gradebook(url, course.id) as gb:
        assert gb.find_student("ada").email == "ada@example.org"
        assert {s.id for s in gb.students} == {"ada", "zed"}


def test_export_csv_has_nbgraders_columns(
    course: Course, assignment: Assignment, db_url: str, tmp_path: Path
) -> None:
    record(course, assignment, scores_for(assignment, "alice", 1.0), db_url)
    record(course, assignment, scores_for(assignment, "bob", 0.0), db_url)
    out = tmp_path / "export" / "grades.csv"
    export_csv(course, out, db_url=db_url)
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["student_id"]: row for row in reader}
    assert reader.fieldnames == NBGRADER_CSV_COLUMNS
    autograded = sum(cell.points for cell in grade_cells(assignment) if not cell.manual)
    assert float(rows["alice"]["score"]) == sum(assignment.parts.values()) + autograded
    assert float(rows["bob"]["score"]) == autograded
    assert {float(row["max_score"]) for row in rows.values()} == {assignment.total_points}


def test_export_without_a_gradebook_is_a_one_line_error(
    autograder_cli: CliRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "nothing-here.db"
    out = tmp_path / "grades.csv"
    result = autograder_cli("export", "--out", out, "--db", f"sqlite:///{missing}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"autograder: error: {missing}: no gradebook database (grade first, or --db)"
    ]
    assert not out.exists() and not missing.exists(), "export wrote a file or a database"


def test_missing_notebook_scores_zero_everywhere(
    course: Course, assignment: Assignment, db_url: str, tmp_path: Path
) -> None:
    """A submission without the notebook: the notebook stage reports its cells at 0, so
    results.json, grades.csv and the gradebook all count the notebook's points in the maximum."""
    from autograder.grading.extensions import StageContext
    from autograder.grading.notebook_stage import notebook_stage
    from autograder.grading.reports import grades_row, gradescope_results
    from autograder.grading.unpack import StudentFiles

    submission = tmp_path / "alice"
    (submission / "flows").mkdir(parents=True)
    (submission / "flows" / "coupling.py").write_text("# the student's code\n")
    context = StageContext(
        course, assignment, "alice", submission, submission, StudentFiles(), parts=None
    )
    outcomes = notebook_stage(context)
    assert {o.status for o in outcomes} == {"failed"}
    assert all("explore.ipynb is not in your submission" in o.message for o in outcomes)
    tests = [models.TestOutcome(f"test_{p}.py::t", p, p, 1.0, "passed") for p in assignment.parts]
    run = models.SuiteRun(tests=tests + outcomes)
    report = SubmissionReport("alice", score(assignment, run))
    graded = GradedSubmission("alice", submission, tmp_path / "out", "key", run, report)
    GradebookSink(course, assignment, db_url)(graded)

    modules = sum(assignment.parts.values())
    assert report.score.total == modules and report.score.max_total == assignment.total_points
    assert grades_row(report, "key")["max"] == assignment.total_points
    results = gradescope_results(assignment, report)
    assert sum(t["max_score"] for t in results["tests"]) == pytest.approx(assignment.total_points)
    with Gradebook(db_url, course.id) as gb:
        stored = gb.find_submission(assignment.name, "alice")
        assert stored.score == pytest.approx(modules)
        assert stored.max_score == pytest.approx(assignment.total_points)


def graded_submission(
    assignment: Assignment, out_dir: Path, *, passed: bool, resumed: bool = False
) -> GradedSubmission:
    """A batch's record of student ``alice``: one test per module part, all passed or failed."""
    status = "passed" if passed else "failed"
    tests = [models.TestOutcome(f"test_{p}.py::t", p, p, 1.0, status) for p in assignment.parts]
    run = models.SuiteRun(tests=tests)
    report = SubmissionReport("alice", score(assignment, run))
    return GradedSubmission("alice", out_dir, out_dir, "key", run, report, resumed=resumed)


def module_score(course: Course, db_url: str, assignment: Assignment) -> float:
    with Gradebook(db_url, course.id) as gb:
        return gb.find_submission_notebook(MODULES_NOTEBOOK, assignment.name, "alice").score


def test_sink_opens_the_gradebook_only_to_record(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    database = tmp_path / "lazy.db"
    sink = GradebookSink(course, assignment, f"sqlite:///{database}")
    assert not database.exists(), "building the sink opened the gradebook"
    sink(graded_submission(assignment, tmp_path / "alice", passed=True))
    assert module_score(course, f"sqlite:///{database}", assignment) == sum(
        assignment.parts.values()
    )
    assert (tmp_path / "alice" / RECEIPT).is_file()


def test_sink_skips_a_resumed_submission_it_recorded(
    course: Course, assignment: Assignment, db_url: str, tmp_path: Path
) -> None:
    """The receipt stands for the recorded scores: a resumed submission with the same scores and
    database is not written again; other scores, a fresh grade or a deleted database are."""
    out_dir = tmp_path / "alice"

    def sink(*, passed: bool, resumed: bool) -> float:
        graded = graded_submission(assignment, out_dir, passed=passed, resumed=resumed)
        GradebookSink(course, assignment, db_url)(graded)  # a new batch each time
        return module_score(course, db_url, assignment)

    full = sum(assignment.parts.values())
    assert sink(passed=True, resumed=False) == full
    # Someone else writes the database meanwhile: 1 point per part.
    cells = {(MODULES_NOTEBOOK, part): 1.0 for part in assignment.parts}
    record(course, assignment, Scores("alice", cells), db_url)
    assert sink(passed=True, resumed=True) == len(assignment.parts)  # skipped: receipt matched
    assert sink(passed=True, resumed=False) == full  # graded again: always written
    assert sink(passed=False, resumed=True) == 0.0  # other scores than the receipt's
    assert sink(passed=True, resumed=False) == full
    Path(db_url.removeprefix("sqlite:///")).unlink()
    assert sink(passed=True, resumed=True) == full  # the deleted database is filled again


@pytest.mark.slow
def test_grading_two_students_fills_the_gradebook(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    """End to end: ``grade_batch`` with the default stages (hidden suites + nbgrader autograde)
    and sinks (the gradebook); the database's totals equal the reports'."""
    from autograder.examples import REFERENCE, STUBS, materialize
    from autograder.grading.batch import grade_batch
    from autograder.notebook import release_notebook

    alice = materialize(assignment, REFERENCE, tmp_path / "alice")
    shutil.copyfile(assignment.solution_dir / "explore.ipynb", alice / "explore.ipynb")
    bob = materialize(assignment, STUBS, tmp_path / "bob")
    release_notebook(assignment, bob)  # the notebook as released, untouched
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    out = tmp_path / "out"

    graded = grade_batch(course, assignment, [alice, bob], out, jobs=2, db_url=url, progress=False)
    with Gradebook(url, course.id) as gb:
        for submission in graded:
            stored = gb.find_submission(assignment.name, submission.name)
            modules = gb.find_submission_notebook(
                MODULES_NOTEBOOK, assignment.name, submission.name
            )
            explore = gb.find_submission_notebook(
                notebook_id(assignment), assignment.name, submission.name
            )
            parts = submission.score.parts
            assert modules.score == pytest.approx(
                sum(p.earned for name, p in parts.items() if name in assignment.parts)
            )
            assert explore.score == pytest.approx(parts["notebook"].earned)
            assert stored.score == pytest.approx(submission.score.total)
        by_name = {g.name: g for g in graded}
        # The notebook: the reference passes every autograded cell, the untouched release none.
        autograded = sum(cell.points for cell in grade_cells(assignment) if not cell.manual)
        assert by_name["alice"].score.parts["notebook"].earned == autograded
        assert by_name["bob"].score.parts["notebook"].earned == 0
        pending = [
            t.outcome.nodeid for t in by_name["alice"].score.tests if t.outcome.status == "pending"
        ]
        assert len(pending) == sum(cell.manual for cell in grade_cells(assignment))

        # A TA grades alice's first answer; the batch runs again (resumed): the grade stays.
        answer = pending[0].split("::")[1]
        grade = gb.find_grade(answer, notebook_id(assignment), assignment.name, "alice")
        grade.manual_score = 2.0
        gb.db.commit()
        before = grade_rows(gb, assignment)
    grade_batch(course, assignment, [alice, bob], out, jobs=2, db_url=url, progress=False)
    with Gradebook(url, course.id) as gb:
        assert grade_rows(gb, assignment) == before
        assert gb.find_submission(assignment.name, "alice").score == pytest.approx(
            by_name["alice"].score.total + 2.0
        )
    assert_formgrader_works(assignment, tmp_path / "nbgrader", ["alice", "bob"])


def assert_formgrader_works(assignment: Assignment, folder: Path, students: list[str]) -> None:
    """nbgrader's course folder beside the gradebook holds each graded notebook, and nbgrader's
    own ``generate_feedback`` (the real command, run from that folder) renders every student's
    notebook feedback from it and the gradebook."""
    name = assignment.notebook.file
    for student in students:
        graded = folder / "autograded" / student / assignment.name / name
        assert nbformat.read(graded, as_version=4).cells, graded
    command = ["nbgrader", "generate_feedback", assignment.name, "--force"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for student in students:
        html = folder / "feedback" / student / assignment.name / name.replace(".ipynb", ".html")
        text = html.read_text(encoding="utf-8")
        total = f"{assignment.notebook.points:.1f}"
        assert re.search(rf"Score: \d+(\.\d+)? / {re.escape(total)}\)", text), html
