"""``autograder build``: the release comes from the solution; ``--check`` catches drift."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ASSIGNMENT, REPO, CliRunner

from autograder.build import build_assignment, render_release, walk_files
from autograder.config import Assignment, load_course
from autograder.errors import AutograderError
from autograder.markers import stub_text

COUPLING = "flows/coupling.py"


@pytest.mark.slow  # nbgrader releases the notebook: seconds
def test_check_passes_on_the_repository(autograder_cli: CliRunner) -> None:
    started = time.perf_counter()
    result = autograder_cli("build", ASSIGNMENT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout
    assert time.perf_counter() - started < 60


def test_editing_a_solution_fails_the_check_until_rebuilt(
    course_copy: Path, autograder_cli: CliRunner
) -> None:
    solution = course_copy / "solutions" / ASSIGNMENT / COUPLING
    text = solution.read_text(encoding="utf-8")
    solution.write_text(text.replace('"""', '"""Edited. ', 1), encoding="utf-8")

    stale = autograder_cli("build", ASSIGNMENT, "--check", cwd=course_copy)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert [line.strip() for line in stale.stdout.splitlines()[1:-1]] == [COUPLING]

    built = autograder_cli("build", ASSIGNMENT, cwd=course_copy)
    assert built.returncode == 0, built.stdout + built.stderr
    release = course_copy / "assignments" / ASSIGNMENT / COUPLING
    assert release.read_text(encoding="utf-8") == stub_text(solution)
    assert "Edited. " in release.read_text(encoding="utf-8")
    assert autograder_cli("build", ASSIGNMENT, "--check", cwd=course_copy).returncode == 0


def test_editing_inside_a_solution_region_changes_no_stub(assignment_in: Assignment) -> None:
    solution = assignment_in.solution_dir / COUPLING
    text = solution.read_text(encoding="utf-8")
    edited = text.replace("### BEGIN SOLUTION\n", "### BEGIN SOLUTION\n        pass\n", 1)
    assert edited != text
    solution.write_text(edited, encoding="utf-8")
    assert build_assignment(assignment_in, check=True) == []


def test_build_adds_new_files_and_removes_stale_ones(assignment_in: Assignment) -> None:
    release = assignment_in.release_dir
    (assignment_in.solution_dir / "data").mkdir()
    (assignment_in.solution_dir / "data" / "moons.csv").write_text("x,y\n", encoding="utf-8")
    (release / "old").mkdir()
    (release / "old" / "gone.py").write_text("x = 1\n", encoding="utf-8")
    before = {rel: path.read_bytes() for rel, path in walk_files(release).items()}

    drift = build_assignment(assignment_in, check=True)
    assert drift == ["data/moons.csv", "old/gone.py"]
    assert {rel: path.read_bytes() for rel, path in walk_files(release).items()} == before

    assert build_assignment(assignment_in, check=False) == drift
    assert (release / "data" / "moons.csv").read_text(encoding="utf-8") == "x,y\n"
    assert not (release / "old").exists()
    assert build_assignment(assignment_in, check=True) == []


def test_caches_left_by_a_test_run_are_not_drift(assignment_in: Assignment) -> None:
    cache = assignment_in.release_dir / "flows" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "coupling.cpython-311.pyc").write_bytes(b"\0")
    (assignment_in.release_dir / ".pytest_cache").mkdir(exist_ok=True)
    assert build_assignment(assignment_in, check=True) == []


def test_points_file_carries_the_points_of_course_yml() -> None:
    assignment = load_course(REPO).assignment(ASSIGNMENT)
    points = json.loads((assignment.release_dir / "tests" / "points.json").read_text())
    assert points == assignment.parts


@pytest.mark.slow  # nbgrader releases the notebook: seconds
def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    assignment = load_course(REPO).assignment(ASSIGNMENT)
    bundles = []
    for name in ("first", "second"):
        render_release(assignment, tmp_path / name)
        files = walk_files(tmp_path / name)
        bundles.append({rel: path.read_bytes() for rel, path in files.items()})
    assert bundles[0] == bundles[1]


def test_a_student_file_without_regions_is_refused(assignment_in: Assignment) -> None:
    solution = assignment_in.solution_dir / COUPLING
    solution.write_text(stub_text(solution), encoding="utf-8")
    with pytest.raises(AutograderError, match=r"coupling\.py: student file without"):
        build_assignment(assignment_in, check=True)


def test_a_missing_student_file_names_its_course_yml_key(assignment_in: Assignment) -> None:
    (assignment_in.solution_dir / COUPLING).unlink()
    with pytest.raises(AutograderError, match=r"^course\.yml: assignments\.\w+\.parts\.coupling"):
        build_assignment(assignment_in, check=True)


def test_a_given_file_with_markers_is_refused(assignment_in: Assignment) -> None:
    given = assignment_in.solution_dir / "flows" / "base.py"
    given.write_text(
        given.read_text() + "\n\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n"
        "    ### END SOLUTION\n"
    )
    with pytest.raises(AutograderError, match=r"base\.py:\d+: '### BEGIN SOLUTION' in a file"):
        build_assignment(assignment_in, check=True)
