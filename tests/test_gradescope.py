"""The Gradescope autograder zip, run for real against a fake ``/autograder`` tree (slow)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import zipfile
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

from autograder.config import Assignment
from autograder.examples import REFERENCE, materialize
from autograder.gradescope import write_gradescope_zip
from tests.conftest import ASSIGNMENT, REPO

SCHEMA = json.loads((REPO / "tests" / "gradescope_results.schema.json").read_text())


@pytest.fixture(scope="module")
def autograder_zip(assignment: Assignment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gradescope_zip(assignment, tmp_path_factory.mktemp("zip") / "autograder.zip")


def test_zip_has_scripts_grader_and_suites_but_no_solutions(
    assignment: Assignment, autograder_zip: Path
) -> None:
    with zipfile.ZipFile(autograder_zip) as archive:
        names = set(archive.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
        setup = archive.read("setup.sh").decode()
    assert {"setup.sh", "run_autograder", "course.yml", "pyproject.toml"} <= names
    assert "autograder/cli.py" in names and "autograder/grading/batch.py" in names
    assert f"tests/hidden/{ASSIGNMENT}/conftest.py" in names
    assert f"assignments/{ASSIGNMENT}/flows/base.py" in names
    assert not [n for n in names if n.startswith("solutions/") or "__pycache__" in n]
    assert modes["run_autograder"] & stat.S_IXUSR and modes["setup.sh"] & stat.S_IXUSR
    assert f"torch=={metadata.version('torch').split('+')[0]}" in setup
    assert "pip3 install --no-deps ." in setup


@pytest.mark.slow
def test_run_autograder_grades_the_reference(
    assignment: Assignment, autograder_zip: Path, tmp_path: Path
) -> None:
    root = tmp_path / "autograder"
    with zipfile.ZipFile(autograder_zip) as archive:
        archive.extractall(root / "source")
    runner = root / "run_autograder"
    runner.write_bytes((root / "source" / "run_autograder").read_bytes())
    runner.chmod(0o755)
    materialize(assignment, REFERENCE, root / "submission")
    # setup.sh is not run: this machine already has the pinned dependencies installed.
    env = {**os.environ, "AUTOGRADER_ROOT": str(root)}
    done = subprocess.run(
        [str(runner)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    results_file = root / "results" / "results.json"
    assert results_file.is_file(), done.stdout + done.stderr
    results = json.loads(results_file.read_text())
    jsonschema.validate(results, SCHEMA)
    assert results["score"] == pytest.approx(sum(assignment.parts.values())), results["output"]
    assert {t["tags"][0] for t in results["tests"]} == set(assignment.parts)
