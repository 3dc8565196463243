"""The explore notebook: valid nbgrader source, released and solved through nbgrader, runnable.

The release and solution versions go through nbgrader's own converters (~2 s each); executing
the source notebook with the reference solution trains two flows (``slow``: ~30 s on a laptop
CPU with one thread).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from autograder.config import Assignment, load_course
from autograder.notebook import grade_cells, release_notebook, solution_notebook
from tests.conftest import ASSIGNMENT, REPO

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
# Lines of the source's solutions and hidden tests: none may reach students.
SOLUTION_TEXT = "x_next, y_next = x.roll(-1, dims=-1)"
HIDDEN_TEXT = "flip = Affine(torch.tensor([[-3.0]])"
ANSWER_TEXT = "MADE pass per feature"


@pytest.fixture(scope="module")
def assignment() -> Assignment:
    return load_course(REPO).assignment(ASSIGNMENT)


@pytest.fixture(scope="module")
def source(assignment: Assignment) -> nbformat.NotebookNode:
    return nbformat.read(assignment.solution_dir / assignment.notebook.file, as_version=4)


@pytest.fixture(scope="module")
def released(assignment: Assignment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_notebook(assignment, tmp_path_factory.mktemp("release"))


def _text(path: Path) -> str:
    """Every cell's source, as a reader of the notebook sees it."""
    return "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)


def test_source_has_valid_nbgrader_metadata(source: nbformat.NotebookNode) -> None:
    from nbgrader.nbgraderformat import SCHEMA_VERSION, MetadataValidator

    MetadataValidator().validate_nb(source)  # raises on any invalid cell
    graded = [c.metadata["nbgrader"] for c in source.cells if "nbgrader" in c.metadata]
    assert {meta["schema_version"] for meta in graded} == {SCHEMA_VERSION}
    ids = [meta["grade_id"] for meta in graded]
    assert len(ids) == len(set(ids)), f"grade ids repeat: {ids}"


def test_points_total_equals_course_yml(assignment: Assignment) -> None:
    cells = grade_cells(assignment)
    assert sum(cell.points for cell in cells) == assignment.notebook.points
    assert any(cell.manual for cell in cells), "no written answer graded by hand"
    assert any(not cell.manual for cell in cells), "no autograded test cell"


def test_every_autograded_test_has_hidden_tests(source: nbformat.NotebookNode) -> None:
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            assert all(marker in cell.source for marker in HIDDEN_MARKERS), meta["grade_id"]
            assert meta["locked"], f"{meta['grade_id']}: a test cell must be locked"


def test_release_shows_no_solution_and_no_hidden_test(released: Path) -> None:
    text = _text(released)
    for secret in (*SOLUTION_MARKERS, *HIDDEN_MARKERS, SOLUTION_TEXT, HIDDEN_TEXT, ANSWER_TEXT):
        assert secret not in text, f"the student notebook contains {secret!r}"
    nb = nbformat.read(released, as_version=4)
    stubs = [c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert any("raise NotImplementedError()" in s for s in stubs)
    assert any("YOUR ANSWER HERE" in s for s in stubs)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_release_is_deterministic(assignment: Assignment, released: Path, tmp_path: Path) -> None:
    again = release_notebook(assignment, tmp_path)
    assert (
        hashlib.sha256(again.read_bytes()).digest()
        == hashlib.sha256(released.read_bytes()).digest()
    )


def test_solution_notebook_keeps_solutions_without_hidden_tests(
    assignment: Assignment, tmp_path: Path
) -> None:
    text = _text(solution_notebook(assignment, tmp_path))
    assert SOLUTION_TEXT in text and ANSWER_TEXT in text
    for secret in (*HIDDEN_MARKERS, HIDDEN_TEXT):
        assert secret not in text, f"the solution notebook contains {secret!r}"


@pytest.mark.slow
def test_source_executes_with_the_reference(assignment: Assignment, tmp_path: Path) -> None:
    """Top to bottom with the reference ``flows`` beside it, on CPU, one thread, no error."""
    from nbclient import NotebookClient

    work = tmp_path / ASSIGNMENT
    shutil.copytree(assignment.solution_dir / "flows", work / "flows")
    nb = nbformat.read(assignment.solution_dir / assignment.notebook.file, as_version=4)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    started = time.monotonic()
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={})
    client.execute(cwd=str(work), env=env)  # raises CellExecutionError on the first error
    elapsed = time.monotonic() - started
    print(f"explore.ipynb executed in {elapsed:.1f} s")
    stderr = [
        (cell.id, out.text)
        for cell in nb.cells
        if cell.metadata.get("nbgrader", {}).get("grade")
        for out in cell.get("outputs", [])
        if out.output_type == "stream" and out.name == "stderr"
    ]
    assert not stderr, f"graded cells wrote to stderr (nbgrader scores that 0): {stderr}"
    pictures = [
        o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(pictures) >= 5, f"expected the lesson's 5 figures, got {len(pictures)}"
