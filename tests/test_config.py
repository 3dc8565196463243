"""``course.yml``: the real file loads; every kind of mistake is one line naming file and key."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from conftest import ASSIGNMENT, REPO, CliRunner

from autograder.config import load_course
from autograder.errors import AutograderError

KEY = f"assignments.{ASSIGNMENT}"

# (how course.yml is broken: pattern -> replacement on the real text, the key the error names)
BROKEN = {
    "invalid yaml": (r"^(\s+)parts:\s*$", r"\1parts: [", "invalid YAML"),
    "missing key": (r"^\s+due: .*\n", "", f"{KEY}.due: missing"),
    "wrong type": (r"^(\s+)coupling: .*$", r"\1coupling: lots", f"{KEY}.parts.coupling: expected"),
    "unknown key": (r"^(\s+)(title: .*)$", r"\1\2\n\1colour: blue", "course.colour: unknown key"),
    "negative points": (
        r"^(\s+)maf: .*$",
        r"\1maf: -5",
        f"{KEY}.parts.maf: expected a number >= 0",
    ),
    "bad date": (r"^(\s+)due: .*$", r"\1due: next friday", f"{KEY}.due: expected an ISO date"),
    "timeout order": (
        r"^(\s+)test_timeout_s: .*$",
        r"\1test_timeout_s: 100000",
        f"{KEY}.limits.test_timeout_s",
    ),
    "visibility": (
        r"^(\s+)hidden_tests_visibility: .*$",
        r"\1hidden_tests_visibility: sometimes",
        f"{KEY}.hidden_tests_visibility",
    ),
}


@pytest.fixture(params=BROKEN.values(), ids=BROKEN.keys())
def broken_course(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A folder whose ``course.yml`` is the real one with one mistake, and what the error names."""
    pattern, replacement, named = request.param
    text = (REPO / "course.yml").read_text(encoding="utf-8")
    broken, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"course.yml no longer has a line matching {pattern!r}"
    (tmp_path / "course.yml").write_text(broken, encoding="utf-8")
    return tmp_path, named


def test_the_repository_course_file_loads() -> None:
    course = load_course(REPO)
    assignment = course.assignment(ASSIGNMENT)
    core = {"change_of_variables", "composition", "coupling", "maf", "train"}
    optional = {"iaf", "glow", "dequantize", "digits"}  # issue 15's parts, selected or not
    assert core <= set(assignment.parts) <= core | optional
    assert all(points > 0 for points in assignment.parts.values())
    assert assignment.due.tzinfo is not None and assignment.due > dt.datetime(
        2020, 1, 1, tzinfo=dt.timezone.utc
    )
    assert assignment.limits.test_timeout_s <= assignment.limits.submission_timeout_s
    assert assignment.notebook is not None and assignment.notebook.file.endswith(".ipynb")
    assert assignment.total_points == sum(assignment.parts.values()) + assignment.notebook.points


def test_a_mistake_is_one_line_naming_file_and_key(broken_course: tuple[Path, str]) -> None:
    root, named = broken_course
    with pytest.raises(AutograderError) as caught:
        load_course(root)
    message = str(caught.value)
    assert message.startswith("course.yml:"), message
    assert named in message and "\n" not in message


def test_the_command_line_prints_the_mistake_as_one_line(
    broken_course: tuple[Path, str], autograder_cli: CliRunner
) -> None:
    root, named = broken_course
    result = autograder_cli("build", ASSIGNMENT, "--check", cwd=root)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("autograder: error: course.yml:")
    assert named in result.stderr and result.stderr.count("\n") == 1


def test_an_unknown_assignment_lists_the_known_ones(autograder_cli: CliRunner) -> None:
    result = autograder_cli("build", "no_such_assignment", "--check")
    assert result.returncode == 2
    assert result.stderr == (
        f"autograder: error: course.yml: no assignment 'no_such_assignment' (known: {ASSIGNMENT})\n"
    )


def test_a_missing_course_file_is_one_line(tmp_path: Path, autograder_cli: CliRunner) -> None:
    result = autograder_cli("build", ASSIGNMENT, "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "course.yml: not found" in result.stderr and result.stderr.count("\n") == 1


def test_parts_the_course_does_not_select_are_named(course_copy: Path) -> None:
    from test_build import OPTIONAL, every_part, five_parts

    assert five_parts(course_copy).unselected_parts == sorted(OPTIONAL)
    assert every_part(course_copy).unselected_parts == []
    five_parts(course_copy)
    # A part needs its public self-checks: a marked file without them is no part (the build
    # then refuses it as a given file with markers), nor is a file without a solution region.
    (course_copy / "solutions" / ASSIGNMENT / "tests" / "test_iaf.py").unlink()
    (course_copy / "solutions" / ASSIGNMENT / "tests" / "test_data.py").write_text("")
    assert load_course(course_copy).assignment(ASSIGNMENT).unselected_parts == [
        "dequantize",
        "digits",
        "glow",
    ]


def test_examples_of_unselected_parts_are_skipped(course_copy: Path) -> None:
    from test_build import every_part, five_parts

    from autograder.examples import load_specs, materialize

    spec = (
        "- name: iaf_log_det_sign\n  part: iaf\n  file: iaf\n"
        "  replace: {old: 'shift, log_scale.sum(-1)', new: 'shift, (-log_scale).sum(-1)'}\n"
        "- name: maf_log_det_sign\n  part: maf\n  file: maf\n"
        "  replace: {old: '-log_scale.sum(-1)', new: 'log_scale.sum(-1)'}\n"
        "- name: typo_part\n  part: iaff\n  file: iaf\n  append: 'x = 1'\n"
    )
    examples = course_copy / "tests" / "examples" / ASSIGNMENT
    examples.mkdir(parents=True)
    (examples / "mutants.yml").write_text(spec.split("- name: typo_part")[0])
    five = five_parts(course_copy)
    assert [s.name for s in load_specs(five, "mutants")] == ["maf_log_det_sign"]
    every = every_part(course_copy)
    names = [s.name for s in load_specs(every, "mutants")]
    assert names == ["iaf_log_det_sign", "maf_log_det_sign"]
    mutant = materialize(every, "iaf_log_det_sign", course_copy / "mutant") / "flows" / "iaf.py"
    assert "(-log_scale).sum(-1)" in mutant.read_text()
    (examples / "mutants.yml").write_text(spec)  # a part that no course knows is still an error
    with pytest.raises(AutograderError, match=r"'typo_part': 'part' must be one of .*got 'iaff'"):
        load_specs(every, "mutants")
