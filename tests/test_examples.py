"""``autograder.examples``: example submissions derived from the reference by spec."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from autograder.config import Assignment
from autograder.errors import AutograderError
from autograder.examples import load_specs, materialize

REPO = Path(__file__).resolve().parents[1]


def student_files(assignment: Assignment) -> list[str]:
    return sorted(f"{part}.py" for part in assignment.parts)


def test_every_mutant_materializes_with_one_edit(assignment, tmp_path):
    specs = load_specs(assignment, "mutants")
    assert len(specs) >= 13 and {spec.part for spec in specs} == set(assignment.parts)
    assert 2 <= sum(spec.demo for spec in specs) <= 3
    reference = assignment.solution_dir / "flows"
    for spec in specs:
        dest = materialize(assignment, spec.name, tmp_path / spec.name)
        files = sorted(p.name for p in (dest / "flows").iterdir())
        assert files == student_files(assignment), spec.name
        changed = [
            name
            for name in files
            if (dest / "flows" / name).read_text() != (reference / name).read_text()
        ]
        assert changed == [f"{spec.file}.py"], spec.name
        edit = spec.new if spec.append is None else spec.append.rstrip("\n")
        assert edit in (dest / "flows" / changed[0]).read_text(), spec.name


def test_reference_is_the_solution_unchanged(assignment, tmp_path):
    dest = materialize(assignment, "reference", tmp_path / "ref")
    for name in student_files(assignment):
        expected = (assignment.solution_dir / "flows" / name).read_text()
        assert (dest / "flows" / name).read_text() == expected


@pytest.fixture
def scratch(assignment, tmp_path) -> Assignment:
    """A copy of the assignment's reference in a temporary root, with its own spec files."""
    shutil.copytree(
        assignment.solution_dir / "flows", tmp_path / "solutions" / assignment.name / "flows"
    )
    (tmp_path / "tests" / "examples" / assignment.name).mkdir(parents=True)
    return dataclasses.replace(assignment, root=tmp_path)


OK = "  file: train\n  part: train\n"
BAD_SPECS = {
    "old missing": (
        f"- name: gone\n{OK}  replace: {{old: 'no such code', new: x}}\n",
        "example 'gone': replace.old occurs 0 times in flows/train.py",
    ),
    "old twice": (
        f"- name: twice\n{OK}  replace: {{old: 'return', new: 'return 1 +'}}\n",
        "example 'twice': replace.old occurs",
    ),
    "both edits": (
        f"- name: both\n{OK}  append: 'x = 1'\n  replace: {{old: a, new: b}}\n",
        "example 'both': give exactly one of",
    ),
    "unknown file": (
        "- name: nofile\n  file: base\n  part: train\n  append: 'x = 1'\n",
        "example 'nofile': 'file' must be one of the student files",
    ),
    "unknown key": (f"- name: extra\n{OK}  append: 'x = 1'\n  points: 3\n", "unknown key 'points'"),
    "no part": ("- name: nopart\n  file: train\n  append: 'x = 1'\n", "'part' is missing"),
    "not a list": ("name: x\n", "expected a list of examples"),
    "bad yaml": ("- name: [unclosed\n", "invalid YAML"),
    "duplicate": (
        f"- name: a\n{OK}  append: 'x = 1'\n- name: a\n{OK}  append: 'y = 1'\n",
        "not unique",
    ),
}


@pytest.mark.parametrize("text,message", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_bad_spec_is_a_one_line_error(scratch, tmp_path, text, message):
    spec_path = scratch.examples_dir / "mutants.yml"
    spec_path.write_text(text)
    with pytest.raises(AutograderError) as error:
        name = text.split("name: ")[1].split("\n")[0] if "name: " in text else "x"
        load_specs(scratch, "mutants")
        materialize(scratch, name, tmp_path / "out")
    assert message in str(error.value)
    assert str(spec_path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_example_name(assignment, tmp_path):
    with pytest.raises(AutograderError, match="no example called 'nope'"):
        materialize(assignment, "nope", tmp_path)
