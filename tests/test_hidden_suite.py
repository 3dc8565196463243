"""The hidden suites have teeth: the reference passes them all, every mutant fails its own part.

Each run is plain pytest in a subprocess, as the grader would start it, against a submission
folder given by ``--submission``. A mutant runs only ``test_<part>.py`` of the part it must lose
points in, with ``-x``: one failure is the proof, and the training tests after it are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.config import load_course
from autograder.examples import load_specs, materialize

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_course(REPO).assignment("normalizing_flows")
MUTANTS = load_specs(ASSIGNMENT, "mutants")

pytestmark = pytest.mark.slow


def run_hidden(submission: Path, *paths: Path, first_failure: bool = False):
    """Run hidden suite files against ``submission``; returns the finished process."""
    command = [
        sys.executable, "-m", "pytest", *map(str, paths), "-p", "no:cacheprovider",
        "--assert=plain", "--submission", str(submission), "-q", "-rf",
    ]  # fmt: skip
    if first_failure:
        command.append("-x")
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_reference_passes_everything():
    done = run_hidden(ASSIGNMENT.solution_dir, ASSIGNMENT.hidden_tests_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def with_given_files(submission: Path) -> Path:
    """Add the course's given files (``base.py``, ...) to ``flows/``, as the grader does."""
    student = {f"{part}.py" for part in ASSIGNMENT.parts}
    for source in (ASSIGNMENT.solution_dir / "flows").glob("*.py"):
        if source.name not in student:
            shutil.copyfile(source, submission / "flows" / source.name)
    return submission


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_fails_its_part(mutant, tmp_path):
    submission = with_given_files(materialize(ASSIGNMENT, mutant.name, tmp_path / mutant.name))
    suite = ASSIGNMENT.hidden_tests_dir / f"test_{mutant.part}.py"
    done = run_hidden(submission, suite, first_failure=True)
    # 1: some test failed. Anything else (0: all passed, 2+: the suite itself broke) is wrong.
    assert done.returncode == 1, (
        f"mutant {mutant.name} ({mutant.description}) should fail a test of {suite.name}; "
        f"pytest exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    )
    assert "FAILED" in done.stdout, done.stdout[-3000:]
