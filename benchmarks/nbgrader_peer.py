"""The peer of ``autograder grade``: nbgrader's ``autograde`` on a notebook of the same checks.

A throw-away nbgrader course (in a temporary folder) holds one assignment, ``checks``, whose
notebook has one setup cell and, per part, one autograded test cell worth that part's points:

    check("coupling")   # pytest.main([tests/hidden/.../test_coupling.py, --submission=DIR])

so nbgrader runs the hidden suite itself, part by part, in one Jupyter kernel, against the same
submission folder the grader gets. What is timed is ``nbgrader autograde checks --student s``:
nbgrader's copy of the submission, its checks of the locked cells, the kernel start, executing
the cells, and writing the grades to its database. Unlike the grader, nbgrader gives a part
all of its points or none, and runs the student code unisolated, in the kernel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ASSIGNMENT, STUDENT = "checks", "student"
CELL_TIMEOUT_S = 600

SETUP = """\
import pytest

HIDDEN = {hidden!r}
SUBMISSION = {submission!r}


def check(part):
    args = [f"{{HIDDEN}}/test_{{part}}.py", f"--submission={{SUBMISSION}}", "-q",
            "-p", "no:cacheprovider", "--assert=plain"]
    assert pytest.main(args) == 0, f"the hidden checks of {{part}} failed"
"""


def _cell(source: str, grade_id: str, points: float | None) -> nbformat.NotebookNode:
    """A locked cell; with ``points`` an autograded test cell (nbgrader's cell metadata)."""
    meta = {
        "grade": points is not None,
        "grade_id": grade_id,
        "locked": True,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    if points is not None:
        meta["points"] = points
    return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})


def write_course(root: Path, hidden: Path, submission: Path, points: dict[str, float]) -> None:
    """The course folder: config, the source notebook, and the generated release."""
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.ExecutePreprocessor.timeout = {CELL_TIMEOUT_S}\n"
    )
    setup = SETUP.format(hidden=str(hidden), submission=str(submission))
    cells = [_cell(setup, "setup", None)]
    cells += [_cell(f'check("{part}")', f"test_{part}", p) for part, p in points.items()]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    nbformat.write(notebook, source / f"{ASSIGNMENT}.ipynb")
    _nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    _nbgrader(root, "db", "student", "add", STUDENT)


def submit(root: Path) -> None:
    """The student hands the released notebook back unchanged (its code is the folder)."""
    submitted = root / "submitted" / STUDENT / ASSIGNMENT
    if submitted.parent.exists():
        shutil.rmtree(submitted.parent)
    shutil.copytree(root / "release" / ASSIGNMENT, submitted)
    for generated in ("autograded", "feedback"):
        shutil.rmtree(root / generated, ignore_errors=True)


def autograde(root: Path) -> tuple[float, float]:
    """``(seconds, score)`` of one ``nbgrader autograde`` of the submitted notebook."""
    submit(root)
    start = time.perf_counter()
    _nbgrader(root, "autograde", ASSIGNMENT, "--student", STUDENT, "--force")
    seconds = time.perf_counter() - start
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        score = gradebook.find_submission(ASSIGNMENT, STUDENT).score
    return seconds, float(score)


def _nbgrader(root: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"nbgrader {' '.join(args)} failed: " + " / ".join(tail))
