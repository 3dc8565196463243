"""``autograder build``: the release comes from the solution; ``--check`` catches drift."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import ASSIGNMENT, REPO, CliRunner

from autograder.build import build_assignment, render_release, walk_files
from autograder.config import Assignment, load_course
from autograder.errors import AutograderError
from autograder.markers import stub_text

COUPLING = "flows/coupling.py"
POINTS = "tests/points.json"


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


# --- course.yml selects the parts ----------------------------------------------------------

# Today's five parts with today's points, and the optional ones the reference offers beyond them
# (with points for a course that takes them). Tests choose either in a copy of the course, so
# they hold whatever the shipped course.yml selects.
FIVE = {"change_of_variables": 20, "composition": 10, "coupling": 25, "maf": 25, "train": 20}
OPTIONAL = {"dequantize": 5.0, "digits": 15.0, "glow": 10.0, "iaf": 10.0}
# Today's release, file by file: what a course with only the five parts must keep getting.
FIVE_PART_RELEASE = {
    "README.md",
    "explore.ipynb",
    "pytest.ini",
    "tests/conftest.py",
    "tests/points.json",
    *(f"flows/{name}.py" for name in ("__init__", "base", "data")),
    *(f"flows/{part}.py" for part in ("change_of_variables", "composition", "coupling")),
    *(f"flows/{part}.py" for part in ("maf", "train")),
    *(f"tests/test_{part}.py" for part in ("change_of_variables", "composition", "coupling")),
    *(f"tests/test_{part}.py" for part in ("maf", "train")),
}


def select_parts(root: Path, parts: dict[str, float]) -> Assignment:
    """Give the course at ``root`` exactly these ``parts`` in its course.yml; its assignment."""
    course = root / "course.yml"
    raw = yaml.safe_load(course.read_text(encoding="utf-8"))
    raw["assignments"][ASSIGNMENT]["parts"] = parts
    course.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_course(root).assignment(ASSIGNMENT)


def every_part(root: Path) -> Assignment:
    """The course at ``root`` with today's five parts and every optional one."""
    return select_parts(root, {**FIVE, **OPTIONAL})


def five_parts(root: Path) -> Assignment:
    """The course at ``root`` with today's five parts only."""
    return select_parts(root, FIVE)


def test_the_shipped_release_has_exactly_the_selected_parts() -> None:
    assignment = load_course(REPO).assignment(ASSIGNMENT)
    assert sorted([*assignment.parts, *assignment.unselected_parts]) == sorted({*FIVE, *OPTIONAL})
    chosen = set(assignment.parts) - set(FIVE)
    expected = FIVE_PART_RELEASE | {f"flows/{p}.py" for p in chosen}
    expected |= {f"tests/test_{p}.py" for p in chosen}
    if "digits" in chosen:
        expected.add("flows/digits.csv.gz")  # the data ship with their part
    assert set(walk_files(assignment.release_dir)) == expected
    for part in assignment.parts:
        solution = assignment.solution_dir / "flows" / f"{part}.py"
        released = assignment.release_dir / "flows" / f"{part}.py"
        assert released.read_text(encoding="utf-8") == stub_text(solution)
    readme = (assignment.release_dir / "README.md").read_text(encoding="utf-8")
    assert "part:" not in readme
    assert ("IAF" in readme) == ("iaf" in chosen)
    assert ("bits/dim" in readme) == bool(chosen & {"dequantize", "digits"})


def test_five_parts_give_todays_release(course_copy: Path) -> None:
    five = five_parts(course_copy)
    assert five.unselected_parts == sorted(OPTIONAL)
    build_assignment(five, check=False)
    assert set(walk_files(five.release_dir)) == FIVE_PART_RELEASE - {"explore.ipynb"}
    assert json.loads((five.release_dir / POINTS).read_text()) == FIVE


def test_a_course_with_every_part_releases_them_all(
    course_copy: Path, autograder_cli: CliRunner
) -> None:
    assignment = every_part(course_copy)
    assert assignment.unselected_parts == [] and len(assignment.parts) == 9
    assert autograder_cli("build", ASSIGNMENT, "--check", cwd=course_copy).returncode == 1
    built = autograder_cli("build", ASSIGNMENT, cwd=course_copy)
    assert built.returncode == 0, built.stdout + built.stderr
    release = assignment.release_dir
    files = walk_files(release)
    for part in assignment.parts:
        solution = assignment.solution_dir / "flows" / f"{part}.py"
        assert files[f"flows/{part}.py"].read_text(encoding="utf-8") == stub_text(solution)
        assert f"tests/test_{part}.py" in files
    data = assignment.solution_dir / "flows" / "digits.csv.gz"
    assert files["flows/digits.csv.gz"].read_bytes() == data.read_bytes()
    assert json.loads(files[POINTS].read_text()) == assignment.parts
    assert autograder_cli("build", ASSIGNMENT, "--check", cwd=course_copy).returncode == 0

    # Back to five parts: the build takes the optional parts' files away again.
    five = five_parts(course_copy)
    assert build_assignment(five, check=False)
    assert set(walk_files(release)) == FIVE_PART_RELEASE - {"explore.ipynb"}


def test_a_part_that_imports_an_unselected_part_is_refused(course_copy: Path) -> None:
    parts = {**FIVE, "digits": 10.0}
    assignment = select_parts(course_copy, parts)
    with pytest.raises(
        AutograderError,
        match=r"^course\.yml: assignments\.\w+\.parts\.digits: needs part 'dequantize' "
        r"\(flows/digits\.py imports flows\.dequantize\), which is not selected$",
    ):
        build_assignment(assignment, check=True)


HANDOUT = """# Handout
Shared text.
<!-- part: coupling -->
Coupling text.
<!-- end part: coupling -->
<!-- part: iaf -->
IAF text.
<!-- end part: iaf -->
The end.
"""


def test_handout_sections_of_unselected_parts_are_left_out(course_copy: Path) -> None:
    five = five_parts(course_copy)
    (five.solution_dir / "README.md").write_text(HANDOUT, encoding="utf-8")
    build_assignment(five, check=False)
    released = (five.release_dir / "README.md").read_text(encoding="utf-8")
    assert released == "# Handout\nShared text.\nCoupling text.\nThe end.\n"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("part: iaf -->", "part: iaff -->"), r"README\.md:6: section of unknown part 'iaff'"),
        (("<!-- end part: iaf -->\n", ""), r"README\.md: the section of part 'iaf' is not closed"),
        (("end part: coupling", "end part: iaf"), r"README\.md:5: '<!-- end part: iaf -->' does"),
    ],
    ids=["unknown part", "unclosed", "mismatched"],
)
def test_a_malformed_handout_section_is_one_line(
    assignment_in: Assignment, edit: tuple[str, str], problem: str
) -> None:
    text = HANDOUT.replace(*edit, 1)
    assert text != HANDOUT
    (assignment_in.solution_dir / "README.md").write_text(text, encoding="utf-8")
    with pytest.raises(AutograderError, match=problem):
        build_assignment(assignment_in, check=True)


@pytest.mark.slow  # nbgrader releases the notebook: seconds
def test_notebook_cells_of_unselected_parts_are_left_out(course_copy: Path) -> None:
    import nbformat

    def part_tags(release: Path) -> set[str]:
        cells = nbformat.read(release / "explore.ipynb", as_version=4).cells
        return {t for c in cells for t in c.metadata.get("tags", []) if t.startswith("part:")}

    shipped = load_course(REPO).assignment(ASSIGNMENT)
    assert part_tags(shipped.release_dir) == {f"part:{p}" for p in shipped.parts} & {
        "part:iaf",
        "part:glow",
        "part:digits",
    }
    notebook = shipped.solution_dir / "explore.ipynb"
    shutil.copy(notebook, course_copy / "solutions" / ASSIGNMENT / "explore.ipynb")
    every = every_part(course_copy)
    render_release(every, course_copy / "every")
    assert part_tags(course_copy / "every") == {"part:iaf", "part:glow", "part:digits"}
    source = nbformat.read(notebook, as_version=4).cells
    released = nbformat.read(course_copy / "every" / "explore.ipynb", as_version=4).cells
    assert len(released) == len(source)
