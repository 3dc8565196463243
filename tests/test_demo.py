"""``autograder demo``: grades the shipped examples and prints the table (slow: ~1-2 min)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autograder.config import load_course
from autograder.demo import demo_examples
from tests.conftest import ASSIGNMENT, REPO, CliRunner


@pytest.mark.slow
def test_demo_passes_and_prints_the_table(autograder_cli: CliRunner, tmp_path: Path) -> None:
    # A copy of the course, so the demo's output folder is fresh and the repository untouched.
    for folder in ("solutions", "assignments", "tests/hidden", "tests/examples"):
        shutil.copytree(
            REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "course.yml", tmp_path / "course.yml")
    result = autograder_cli("demo", "--jobs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assignment = load_course(REPO).assignment(ASSIGNMENT)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("submission"))
    assert all(part in header for part in assignment.parts) and "total" in header
    modules = sum(assignment.parts.values())
    # The demo's submissions carry no notebook: its points count in the maximum, earned 0.
    maximum = modules + (assignment.notebook.points if assignment.notebook else 0)
    rows = {
        line.split()[0]: line
        for line in lines
        if line.split() and line.split()[0] in demo_examples(assignment)
    }
    assert set(rows) == set(demo_examples(assignment))
    assert f"{modules:g}/{maximum:g}" in rows["reference"]
    assert f"0/{maximum:g}" in rows["stubs"]
    for name in demo_examples(assignment)[2:]:  # each mutant loses something
        assert f"{modules:g}/{maximum:g}" not in rows[name], rows[name]
    assert (tmp_path / "grading-out" / "demo" / "reference" / "feedback.html").is_file()
