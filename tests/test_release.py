"""The students' bundle and the TAs' solutions bundle: what is in them and what never is."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from conftest import ASSIGNMENT, REPO, CliRunner

from autograder.build import build_assignment
from autograder.config import Assignment, load_course
from autograder.errors import AutograderError
from autograder.markers import solution_text, stub_text
from autograder.release import release_solutions, release_student

# Written independently of autograder.markers, so a bug there cannot hide a leak here.
FORBIDDEN_IN_STUDENT_FILES = ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS")
DAY = dt.timedelta(days=1)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _hidden_suites(assignment: Assignment) -> set[bytes]:
    return {path.read_bytes() for path in assignment.hidden_tests_dir.rglob("*.py")} - {b""}


@pytest.mark.slow
def test_student_bundle_has_stubs_public_tests_and_handout_only(
    assignment: Assignment, autograder_cli: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = autograder_cli("release", ASSIGNMENT, "--out", out)
    assert result.returncode == 0, result.stderr

    files = _files(out)
    for part in assignment.parts:
        solution = assignment.solution_dir / "flows" / f"{part}.py"
        assert files[f"flows/{part}.py"].decode() == stub_text(solution)
    public = sorted(f"tests/test_{part}.py" for part in assignment.parts)
    assert public == sorted(name for name in files if name.startswith("tests/test_"))
    for part in assignment.unselected_parts:  # not in course.yml: not in the students' hands
        assert not [name for name in files if f"/{part}." in name or f"test_{part}." in name]
    assert {"README.md", "pytest.ini", "tests/points.json"} <= set(files)
    assert assignment.notebook is not None and assignment.notebook.file in files
    hidden = _hidden_suites(assignment)
    for relative, data in files.items():
        assert "hidden" not in relative and data not in hidden, relative
        for marker in FORBIDDEN_IN_STUDENT_FILES:
            assert marker.encode() not in data, f"{relative} contains {marker!r}"


def test_a_stale_release_is_not_shipped(assignment_in: Assignment, tmp_path: Path) -> None:
    solution = assignment_in.solution_dir / "flows" / "coupling.py"
    solution.write_text(solution.read_text().replace('"""', '"""Edited. ', 1))
    out = tmp_path / "bundle"
    with pytest.raises(
        AutograderError, match=r"out of date .*flows/coupling\.py.*autograder build"
    ):
        release_student(assignment_in, out)
    assert not out.exists()


@pytest.mark.parametrize("leak", ["tests/hidden/test_coupling.py", "tests/test_secret.py"])
def test_a_hidden_suite_in_the_solution_folder_never_ships(
    assignment_in: Assignment, tmp_path: Path, leak: str
) -> None:
    # Copied under tests/hidden, or renamed beside the public tests: both are the hidden suite.
    target = assignment_in.solution_dir / leak
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(assignment_in.hidden_tests_dir / "conftest.py", target)
    build_assignment(assignment_in, check=False)
    for release in (release_student, lambda a, o: release_solutions(a, o, force=True)):
        out = tmp_path / "out"
        with pytest.raises(AutograderError, match=f"refusing to release {leak}: it is a hidden"):
            release(assignment_in, out)
        assert not out.exists()


def test_solutions_are_refused_before_the_due_date(
    course_copy: Path, autograder_cli: CliRunner, tmp_path: Path
) -> None:
    course = course_copy / "course.yml"
    text = course.read_text()
    due = load_course(course_copy).assignment(ASSIGNMENT).due
    course.write_text(text.replace(f"due: {due.isoformat()}", "due: 2999-01-01T00:00:00+00:00"))

    out = tmp_path / "solutions"
    result = autograder_cli("release-solutions", ASSIGNMENT, "--out", out, cwd=course_copy)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "2999-01-01T00:00:00+00:00" in result.stderr and "--force" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_solutions_bundle_has_solutions_public_tests_and_notebook(
    assignment: Assignment, tmp_path: Path
) -> None:
    out = tmp_path / "solutions"
    release_solutions(assignment, out, force=True, now=assignment.due - 30 * DAY)

    files = _files(out)
    assert assignment.notebook is not None and assignment.notebook.file in files
    for part in assignment.parts:
        solution = assignment.solution_dir / "flows" / f"{part}.py"
        module = files[f"flows/{part}.py"].decode()
        assert module == solution_text(solution)
        assert "### BEGIN SOLUTION" not in module and "NotImplementedError" not in module
    assert files["flows/base.py"] == (assignment.solution_dir / "flows" / "base.py").read_bytes()
    assert any(name.startswith("tests/test_") for name in files)
    hidden = _hidden_suites(assignment)
    for relative, data in files.items():
        assert "hidden" not in relative and data not in hidden, relative
        assert b"HIDDEN TESTS" not in data, relative


def test_solutions_are_released_once_the_due_date_has_passed(
    assignment_in: Assignment, tmp_path: Path
) -> None:
    out = tmp_path / "solutions"
    release_solutions(assignment_in, out, force=False, now=assignment_in.due + DAY)
    coupling = assignment_in.solution_dir / "flows" / "coupling.py"
    assert (out / "flows" / "coupling.py").read_text() == solution_text(coupling)


def test_solutions_just_before_the_due_date_are_refused(
    assignment: Assignment, tmp_path: Path
) -> None:
    with pytest.raises(AutograderError, match=r"due is .*--force"):
        release_solutions(assignment, tmp_path / "out", force=False, now=assignment.due - DAY)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["release"], ["release-solutions", "--force"]])
def test_a_non_empty_output_folder_is_never_clobbered(
    autograder_cli: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = autograder_cli(*command, ASSIGNMENT, "--out", out)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not empty" in result.stderr and result.stderr.count("\n") == 1
    assert _files(out) == {"notes.txt": b"mine"}


# --- bundles and grading of a course that selects parts ------------------------------------


def test_bundles_carry_exactly_the_selected_parts(course_copy: Path, tmp_path: Path) -> None:
    from test_build import OPTIONAL, every_part, five_parts

    five = five_parts(course_copy)
    release_solutions(five, tmp_path / "five", force=True)
    assert not [name for name in _files(tmp_path / "five") if Path(name).stem in OPTIONAL]

    every = every_part(course_copy)
    build_assignment(every, check=False)
    release_student(every, tmp_path / "student")
    release_solutions(every, tmp_path / "solutions", force=True)
    student, solutions = _files(tmp_path / "student"), _files(tmp_path / "solutions")
    for part in every.parts:
        module = every.solution_dir / "flows" / f"{part}.py"
        assert student[f"flows/{part}.py"].decode() == stub_text(module)
        assert solutions[f"flows/{part}.py"].decode() == solution_text(module)
        assert f"tests/test_{part}.py" in student and f"tests/test_{part}.py" in solutions
    assert "flows/digits.csv.gz" in student and "flows/digits.csv.gz" in solutions


def test_gradescope_zip_ships_the_suites_of_selected_parts_only(
    course_copy: Path, tmp_path: Path
) -> None:
    import zipfile

    from test_build import every_part, five_parts

    from autograder.gradescope import write_gradescope_zip

    for name in ("README.md", "pyproject.toml"):
        shutil.copy(REPO / name, course_copy / name)
    suite = course_copy / "tests" / "hidden" / ASSIGNMENT / "test_iaf.py"
    suite.write_text("def test_iaf_suite():\n    pass\n")
    member = f"tests/hidden/{ASSIGNMENT}/test_iaf.py"
    five = five_parts(course_copy)
    build_assignment(five, check=False)
    with zipfile.ZipFile(write_gradescope_zip(five, tmp_path / "five.zip")) as archive:
        names = archive.namelist()
    assert f"tests/hidden/{ASSIGNMENT}/test_maf.py" in names and member not in names
    every = every_part(course_copy)
    build_assignment(every, check=False)
    with zipfile.ZipFile(write_gradescope_zip(every, tmp_path / "every.zip")) as archive:
        assert member in archive.namelist()


def test_grading_collects_no_suite_of_an_unselected_part(course_copy: Path, tmp_path: Path) -> None:
    """A real harness and worker: the suite of a part course.yml leaves out is not collected
    (its outcomes would be of a part the scoring does not know), the selected ones are."""
    from test_build import FIVE, every_part, five_parts
    from test_build import OPTIONAL as OPTIONAL_POINTS

    from autograder.grading.scoring import score
    from autograder.grading.supervisor import Supervisor
    from autograder.grading.unpack import collect_submission
    from autograder.grading.workspace import prepare_workspace, student_file_names

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "test_composition.py").write_text("def test_composition_suite():\n    pass\n")
    (suites / "test_iaf.py").write_text("def test_iaf_suite():\n    pass\n")
    graded = {}
    for name in ("five", "every"):
        assignment = five_parts(course_copy) if name == "five" else every_part(course_copy)
        build_assignment(assignment, check=False)
        files = collect_submission(assignment.solution_dir, student_file_names(assignment))
        workspace = prepare_workspace(assignment, files, tmp_path / f"{name}-ws")
        with Supervisor(assignment, tests_dir=suites, sandbox_name="bwrap") as supervisor:
            run = supervisor.run(workspace)
        graded[name] = (run, score(assignment, run))
    run, marks = graded["five"]
    assert [(t.part, t.status) for t in run.tests] == [("composition", "passed")], run.tests
    assert set(marks.parts) == set(FIVE) | {"notebook"}
    run, marks = graded["every"]
    assert sorted((t.part, t.status) for t in run.tests) == [
        ("composition", "passed"),
        ("iaf", "passed"),
    ], run.tests
    assert marks.parts["iaf"].earned == OPTIONAL_POINTS["iaf"]
