"""Batch grading for real: the hidden suites run on the reference, the stubs and a broken zip.

One batch is graded once per session (``graded`` fixture, ~30-40 s with 2 jobs) and shared by
every test here; the resume tests re-run it on the same output folder.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import jsonschema
import matplotlib.image
import pytest

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.examples import REFERENCE, STUBS, materialize
from autograder.grading import models
from autograder.grading.batch import (
    GRADING,
    Extensions,
    GradedSubmission,
    StageContext,
    grade_batch,
)
from tests.conftest import REPO, CliRunner

pytestmark = pytest.mark.slow

SCHEMA = json.loads((REPO / "tests" / "gradescope_results.schema.json").read_text())
BROKEN = "broken"
LINKED = "linked"
# The batch's own pipeline; the notebook stage and the gradebook sink have their own tests.
OPTIONS = {"jobs": 2, "progress": False, "extensions": Extensions()}


@pytest.fixture(scope="module")
def submissions(assignment: Assignment, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("submissions")
    broken = root / f"{BROKEN}.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    # flows/ a link into the course repository: must be refused, not graded as the reference.
    linked = root / LINKED
    linked.mkdir()
    (linked / "flows").symlink_to(assignment.solution_dir / "flows", target_is_directory=True)
    return [
        materialize(assignment, REFERENCE, root / REFERENCE),
        materialize(assignment, STUBS, root / STUBS),
        broken,
        linked,
    ]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graded")


@pytest.fixture(scope="module")
def graded(
    course: Course, assignment: Assignment, submissions: list[Path], out: Path
) -> dict[str, GradedSubmission]:
    batch = grade_batch(course, assignment, submissions, out, **OPTIONS)
    return {g.name: g for g in batch}


def results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def test_reference_gets_full_marks(assignment: Assignment, graded, out: Path) -> None:
    reference = graded[REFERENCE].score
    for part in assignment.parts:
        assert reference.parts[part].earned == reference.parts[part].max_points, part
    assert results(out, REFERENCE)["score"] == pytest.approx(sum(assignment.parts.values()))
    assert results(out, REFERENCE)["extra_data"]["flags"] == []


def test_stubs_get_zero_without_crashing(assignment: Assignment, graded, out: Path) -> None:
    stubs = results(out, STUBS)
    assert stubs["score"] == 0
    assert {t["tags"][0] for t in stubs["tests"]} == set(assignment.parts)
    assert "still the stub" in (out / STUBS / "feedback.md").read_text()


@pytest.mark.parametrize("name", [REFERENCE, STUBS, BROKEN, LINKED])
def test_every_results_json_is_valid_gradescope(graded, out: Path, name: str) -> None:
    jsonschema.validate(results(out, name), SCHEMA)
    assert (out / name / "feedback.md").is_file() and (out / name / "feedback.html").is_file()


def test_broken_zip_gets_complete_results(assignment: Assignment, graded, out: Path) -> None:
    broken = results(out, BROKEN)
    assert broken["score"] == 0
    assert "not a valid zip file" in broken["output"]
    assert any("unreadable submission" in flag for flag in broken["extra_data"]["flags"])
    assert sum(t["max_score"] for t in broken["tests"]) == pytest.approx(
        sum(assignment.parts.values())
    )


def test_symlinked_flows_is_refused_and_said_so(graded, out: Path) -> None:
    linked = results(out, LINKED)
    assert linked["score"] == 0, "the link into the course repository was followed"
    assert "refused flows: a symbolic link" in linked["extra_data"]["flags"]
    feedback = (out / LINKED / "feedback.md").read_text()
    assert "flows in your submission was refused: it is a symbolic link" in feedback
    assert "not in your submission" not in feedback


def test_missing_submission_path_is_one_line_error_before_grading(
    autograder_cli: CliRunner, submissions: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "alice-typo"
    out = tmp_path / "out"
    result = autograder_cli("grade", "normalizing_flows", submissions[0], missing, "--out", out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"autograder: error: {missing}: no such submission (not a file or folder)"
    ]
    assert not out.exists(), "something was graded before the error"


def test_grades_csv_has_one_row_per_submission(assignment: Assignment, graded, out: Path) -> None:
    rows = {row["name"]: row for row in csv.DictReader((out / "grades.csv").open())}
    assert set(rows) == {REFERENCE, STUBS, BROKEN, LINKED}
    assert float(rows[REFERENCE]["total"]) == sum(assignment.parts.values())
    assert float(rows[STUBS]["total"]) == 0
    assert "not a valid zip file" in rows[BROKEN]["flags"]
    assert rows[REFERENCE]["key"] and float(rows[REFERENCE]["wall_time_s"]) > 0


def test_feedback_never_shows_hidden_test_code(assignment: Assignment, graded, out: Path) -> None:
    code = {
        line.strip()
        for path in assignment.hidden_tests_dir.rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip().startswith(("assert ", "def ", "import ", "from ", "return "))
    }
    for name in (REFERENCE, STUBS):
        shown = (out / name / "feedback.md").read_text() + (out / name / "results.json").read_text()
        leaked = [line for line in code if len(line) > 12 and line in shown]
        assert not leaked, f"{name}: {leaked[:3]}"


def test_reference_feedback_has_density_pictures(graded, out: Path) -> None:
    pictures = graded[REFERENCE].report.pictures
    assert pictures is not None and pictures.images, pictures
    for path in pictures.images.values():
        pixels = matplotlib.image.imread(path)
        assert path.stat().st_size > 10_000 and pixels[..., :3].std() > 0.05
        assert (
            f"({path.relative_to(out / REFERENCE).as_posix()})"
            in (out / REFERENCE / "feedback.md").read_text()
        )


def test_stubs_feedback_notes_missing_pictures(graded, out: Path) -> None:
    assert "no picture of your" in (out / STUBS / "feedback.md").read_text()


def test_rerun_resumes_without_grading_again(
    course: Course, assignment: Assignment, submissions: list[Path], out: Path, graded
) -> None:
    started = time.monotonic()
    again = grade_batch(course, assignment, submissions, out, **OPTIONS)
    elapsed = time.monotonic() - started
    by_name = {g.name: g for g in again}
    assert by_name[REFERENCE].resumed and by_name[STUBS].resumed
    assert not by_name[BROKEN].resumed  # never stored with a key: always tried again
    assert by_name[REFERENCE].score.total == graded[REFERENCE].score.total
    assert elapsed < 10, f"resuming took {elapsed:.1f} s"


def test_interrupted_submission_is_graded_again(
    course: Course, assignment: Assignment, submissions: list[Path], out: Path, graded
) -> None:
    # A batch killed while grading the stubs left no grading.json for them.
    (out / STUBS / GRADING).unlink()
    again = {g.name: g for g in grade_batch(course, assignment, submissions[:2], out, **OPTIONS)}
    assert again[REFERENCE].resumed and not again[STUBS].resumed
    assert again[STUBS].score.total == 0 and (out / STUBS / GRADING).is_file()


def test_duplicate_names_are_refused(
    course: Course, assignment: Assignment, submissions: list[Path], tmp_path: Path
) -> None:
    twin = tmp_path / "other" / REFERENCE
    twin.mkdir(parents=True)
    with pytest.raises(AutograderError, match="two submissions are named 'reference'"):
        grade_batch(course, assignment, [submissions[0], twin], tmp_path / "out", **OPTIONS)


def test_extension_points_run_and_a_failing_stage_costs_only_its_points(
    course: Course, assignment: Assignment, submissions: list[Path], tmp_path: Path
) -> None:
    assert assignment.notebook is not None
    seen: list[StageContext] = []
    sunk: list[GradedSubmission] = []

    def notebook(ctx: StageContext) -> list[models.TestOutcome]:
        seen.append(ctx)
        assert (ctx.workspace / "flows" / "composition.py").is_file()  # still there
        return [
            models.TestOutcome("explore.ipynb::cell", "the notebook runs", "notebook", 1, "passed")
        ]

    def broken_stage(ctx: StageContext) -> list[models.TestOutcome]:
        raise RuntimeError("kernel died")

    extensions = Extensions(stages=[notebook, broken_stage], sinks=[sunk.append])
    options = {**OPTIONS, "extensions": extensions, "parts": ["composition", "notebook"]}
    (graded,) = grade_batch(course, assignment, submissions[:1], tmp_path, **options)
    assert [ctx.name for ctx in seen] == [REFERENCE] and sunk == [graded]
    assert graded.score.parts["notebook"].earned == assignment.notebook.points
    assert graded.score.total == assignment.parts["composition"] + assignment.notebook.points
    assert not graded.score.parts["coupling"].graded
    assert any("broken_stage failed: RuntimeError('kernel died')" in f for f in graded.run.flags)


# --- a test that timed out is rerun alone ------------------------------------------------------

FOREVER = """

def _forever(self, z):  # appended by the test: every forward pass loops forever
    while True:
        pass


Sequential.forward = _forever
"""


def test_a_timed_out_test_is_rerun_alone_and_takes_the_reruns_outcome(
    assignment: Assignment, submissions: list[Path], tmp_path: Path
) -> None:
    """The first run's outcome is made a timeout (as a busy neighbour would); the real harness
    reruns exactly that test, which passes, and the feedback says it was rerun."""
    from autograder.grading.rerun import RERUN_NOTE, rerun_alone
    from autograder.grading.supervisor import Supervisor
    from autograder.grading.unpack import collect_submission
    from autograder.grading.workspace import prepare_workspace, student_file_names

    files = collect_submission(submissions[0], student_file_names(assignment))
    workspace = prepare_workspace(assignment, files, tmp_path / "ws")
    seen: list[models.SuiteRun] = []
    with Supervisor(assignment, sandbox_name="auto") as supervisor:
        first = supervisor.run(workspace, parts=["composition"])

        class Recording:
            def run(self, workspace: Path, **options) -> models.SuiteRun:
                seen.append(supervisor.run(workspace, **options))
                return seen[-1]

        slowed = first.tests[1]
        slowed.status, slowed.message = "timeout", "timed out after 90 s in Sequential.forward"
        forfeited = first.tests[2]
        forfeited.status, forfeited.message = "timeout", "not run: composition timed out twice"
        again = rerun_alone(assignment, submissions[0], first, Recording())
    assert again is not None and len(seen) == 1
    assert [t.nodeid for t in seen[0].tests] == [slowed.nodeid], "not exactly the timed-out test"
    by_id = {t.nodeid: t for t in again.tests}
    assert by_id[slowed.nodeid].status == "passed"
    assert RERUN_NOTE in by_id[slowed.nodeid].message
    assert by_id[forfeited.nodeid].status == "timeout", "a forfeited test was rerun"
    assert any(RERUN_NOTE in flag for flag in again.flags)


def test_a_test_that_times_out_again_alone_keeps_its_timeout(
    course_copy: Path, assignment: Assignment, tmp_path: Path
) -> None:
    """A forever loop (a 5 s test clock): the two tests that ran and timed out are rerun alone
    after the batch and time out again; the tests forfeited after them are not rerun."""
    from autograder.config import load_course
    from autograder.grading.rerun import RERUN_NOTE

    config = course_copy / "course.yml"
    config.write_text(config.read_text().replace("test_timeout_s: 90", "test_timeout_s: 5"))
    short = load_course(course_copy)
    looping = materialize(assignment, REFERENCE, tmp_path / "looping")
    with (looping / "flows" / "composition.py").open("a") as handle:
        handle.write(FOREVER)
    options = {**OPTIONS, "parts": ["composition"]}
    (graded,) = grade_batch(
        short, short.assignment("normalizing_flows"), [looping], tmp_path / "o", **options
    )
    timeouts = [t for t in graded.run.tests if t.status == "timeout"]
    rerun = [t for t in timeouts if RERUN_NOTE in t.message]
    assert len(rerun) == 2, [(t.nodeid, t.message) for t in timeouts]
    assert all(t.message.startswith("not run") for t in timeouts if t not in rerun)
    assert RERUN_NOTE in (tmp_path / "o" / "looping" / "feedback.md").read_text()


def test_leaderboard_of_the_reference_and_none_without_working_code(
    assignment: Assignment, graded, out: Path
) -> None:
    """Gradescope's leaderboard (results.json) and the staff's copy (grading.json's run): the
    reference's two-moons NLLs beside their floors and (where the course has the part) its
    digits bits/dim, finite; the stubs and a refused flows/ report no figure (their tests did
    not pass)."""
    board = {e["name"]: e for e in results(out, REFERENCE)["leaderboard"]}
    for model in ("RealNVP", "MAF"):
        nll = board[f"two moons {model}: held-out NLL (nats)"]["value"]
        floor = board[f"two moons {model}: floor, the true density's NLL (nats)"]["value"]
        assert 0.2 < floor < nll <= 0.6, (model, nll, floor)
    stored = json.loads((out / REFERENCE / GRADING).read_text())["run"]["leaderboard"]
    assert {e["name"] for e in stored} == set(board)
    measured_by = {"train": "test_converges_on_two_moons", "digits": "test_held_out_bits"}
    assert all(measured_by[e["part"]] in e["nodeid"] for e in stored), stored
    if "digits" in assignment.parts:
        assert 2.0 < board["digits: held-out bits/dim"]["value"] <= 2.40
    for name in (STUBS, LINKED, BROKEN):
        assert "leaderboard" not in results(out, name), name
