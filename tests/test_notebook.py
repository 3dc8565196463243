"""The explore notebook: valid nbgrader source, released and solved through nbgrader, runnable,
and part of what the batch's resume key covers.

The release and solution versions go through nbgrader's own converters (~2 s each); executing
the source notebook with the reference solution trains two flows (``slow``: ~30 s on a laptop
CPU with one thread). The resume test grades with a fake notebook stage (the batch's own code
is under test, not nbgrader's autograde): ``slow``, ~12 s for three one-submission batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder.config import Assignment, Course
from autograder.examples import STUBS, materialize
from autograder.grading import models
from autograder.grading.batch import Extensions, StageContext, default_extensions, grade_batch
from autograder.grading.notebook_stage import find_submitted_notebook, notebook_fingerprint
from autograder.notebook import grade_cells, release_notebook, solution_notebook
from tests.conftest import ASSIGNMENT

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
# Lines of the source's solutions and hidden tests: none may reach students.
SOLUTION_TEXT = "x_next, y_next = x.roll(-1, dims=-1)"
HIDDEN_TEXT = "flip = Affine(torch.tensor([[-3.0]])"
ANSWER_TEXT = "MADE pass per feature"


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


# --- the submitted notebook and the resume key ----------------------------------------------


@pytest.fixture
def submission(assignment: Assignment, tmp_path: Path) -> Path:
    """The stubs with the notebook as released (``flows/`` beside ``explore.ipynb``)."""
    folder = materialize(assignment, STUBS, tmp_path / "student")
    shutil.copyfile(assignment.release_dir / assignment.notebook.file, folder / "explore.ipynb")
    return folder


def _zip(folder: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, prefix + path.relative_to(folder).as_posix())
    return dest


@pytest.mark.parametrize("prefix", ["", "student/"], ids=["zip-top", "zip-one-folder-down"])
def test_notebook_is_found_in_a_zip(
    assignment: Assignment, submission: Path, tmp_path: Path, prefix: str
) -> None:
    archive = _zip(submission, tmp_path / "student.zip", prefix)
    expected = (submission / "explore.ipynb").read_bytes()
    assert find_submitted_notebook(assignment, archive) == expected
    assert notebook_fingerprint(assignment, archive) == expected


def test_fingerprint_of_a_submission_without_notebook_is_empty(
    assignment: Assignment, submission: Path
) -> None:
    (submission / "explore.ipynb").unlink()
    assert find_submitted_notebook(assignment, submission) is None
    assert notebook_fingerprint(assignment, submission) == b""


@pytest.mark.slow
def test_an_edited_notebook_alone_is_graded_again(
    course: Course, assignment: Assignment, submission: Path, tmp_path: Path
) -> None:
    """The default extensions put the notebook in the content key: a batch re-run after the
    student changed only ``explore.ipynb`` runs the notebook stage again instead of resuming."""
    seen: list[bytes] = []

    def stage(context: StageContext) -> list[models.TestOutcome]:
        seen.append(find_submitted_notebook(context.assignment, context.submission) or b"")
        return [models.TestOutcome("explore.ipynb::fake", "fake", "notebook", 1.0, "passed")]

    # Only the fingerprints of the real defaults: the gradebook sink and nbgrader stay out.
    defaults = default_extensions(course, assignment, f"sqlite:///{tmp_path / 'unused.db'}")
    assert defaults.fingerprints, "the notebook is not in the resume key"
    extensions = Extensions(stages=[stage], fingerprints=defaults.fingerprints)
    options = {"parts": ["notebook"], "extensions": extensions, "progress": False}
    out = tmp_path / "out"

    def grade() -> bool:
        (graded,) = grade_batch(course, assignment, [submission], out, **options)
        return graded.resumed

    assert not grade() and len(seen) == 1
    assert grade() and len(seen) == 1  # unchanged: resumed, the stage does not run
    notebook = submission / "explore.ipynb"
    edited = nbformat.read(notebook, as_version=4)
    edited.cells.append(nbformat.v4.new_markdown_cell("My own note on MAF."))
    nbformat.write(edited, notebook)
    assert not grade(), "only the notebook changed, and the submission was resumed"
    assert len(seen) == 2 and seen[1] == notebook.read_bytes()


# --- the kernel under each sandbox backend ----------------------------------------------------

KERNEL_PROBE = """\
import json, os
report = {"uid": os.getuid()}
report["read"] = [p for p in %(secrets)r if os.path.exists(p)]
try:
    with open("/var/tmp/%(marker)s", "w") as f:
        f.write("escaped")
    report["wrote"] = True
except OSError:
    report["wrote"] = False
import matplotlib.pyplot as plt
plt.plot([0, 1], [0, 1])
plt.title("fonts")
plt.savefig("probe.png")
print("PROBE " + json.dumps(report))
"""


class _Keep:
    """Where ``autograde`` puts the executed notebook (instead of nbgrader's course folder)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest

    def save(self, graded: Path) -> None:
        shutil.copyfile(graded, self.dest)


def _kernel_backend(name: str):
    from autograder.grading import sandbox

    backend = sandbox.choose("none") if name == "none" else None
    if backend is None:
        backend = sandbox.BubblewrapBackend() if name == "bwrap" else sandbox.UserBackend()
        problem = backend.unavailable()
        if problem is not None:
            pytest.skip(f"the {name} backend is not available here: {problem}")
    return backend


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["bwrap", "user", "none"])
def test_notebook_kernel_runs_under_the_batchs_backend(
    course: Course, assignment: Assignment, submission: Path, tmp_path: Path, backend_name: str
) -> None:
    """A notebook cell that looks for the course's files and writes ``/var/tmp``: under bwrap
    it sees none of them and writes nothing outside its folder; under ``none`` it is flagged;
    matplotlib renders without a Fontconfig error. ``user`` runs here where this very host is
    laid out for it (else skipped; the next test lays one out)."""
    from autograder.grading.notebook_stage import autograde
    from autograder.grading.sandbox.kernel import KERNEL_UID
    from autograder.grading.unpack import collect_submission
    from autograder.grading.workspace import prepare_workspace, student_file_names

    backend = _kernel_backend(backend_name)
    marker = f"autograder-probe-{os.getpid()}-{backend_name}"
    secrets = [
        str(assignment.root / "course.yml"),
        str(assignment.hidden_tests_dir),
        str(assignment.solution_dir),
    ]
    nb = nbformat.read(submission / "explore.ipynb", as_version=4)
    probe = KERNEL_PROBE % {"secrets": secrets, "marker": marker}
    nb.cells.insert(0, nbformat.v4.new_code_cell(probe))
    files = collect_submission(submission, student_file_names(assignment))
    workspace = prepare_workspace(assignment, files, tmp_path / "workspace")
    graded = tmp_path / "graded.ipynb"
    flags: list[str] = []
    try:
        outcomes = autograde(
            course,
            assignment,
            nbformat.writes(nb).encode(),
            workspace,
            "alice",
            keep=_Keep(graded),
            backend=backend,
            flags=flags,
        )
        escaped = Path("/var/tmp", marker).exists()
    finally:
        Path("/var/tmp", marker).unlink(missing_ok=True)
    assert outcomes and not [o for o in outcomes if o.status == "error"], outcomes
    cells = nbformat.read(graded, as_version=4).cells
    printed = "".join(o.get("text", "") for o in cells[0].get("outputs", []))
    assert "PROBE " in printed, cells[0].get("outputs")
    report = json.loads(printed.split("PROBE ", 1)[1].splitlines()[0])
    everything = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    assert "Fontconfig error" not in everything
    if backend_name == "none":
        assert "no-sandbox" in flags
        return
    assert report["read"] == [], f"the kernel saw {report['read']}"
    assert not escaped, f"the host's /var/tmp kept what the kernel wrote; flags: {flags}"
    if backend_name == "bwrap":
        assert not report["wrote"], "the kernel could write /var/tmp"
    else:  # its own /var/tmp (a private tmpfs), or the host's, cleaned up and flagged
        assert report["uid"] >= KERNEL_UID, report
        assert report["wrote"] or any("mount namespace" in f for f in flags), flags


def graded_exists(db: Path) -> list[str]:
    return [str(p) for p in db.rglob("*.ipynb")]


def _probe_report(notebook: Path) -> tuple[dict, str]:
    """What the probe cell printed, and every output's text (for Fontconfig errors)."""
    cells = nbformat.read(notebook, as_version=4).cells
    printed = "".join(o.get("text", "") for o in cells[0].get("outputs", []))
    assert "PROBE " in printed, cells[0].get("outputs")
    everything = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    return json.loads(printed.split("PROBE ", 1)[1].splitlines()[0]), everything


@pytest.mark.slow
def test_notebook_kernel_runs_as_the_dedicated_user(
    assignment: Assignment, submission: Path, tmp_path: Path
) -> None:
    """``autograder grade --sandbox user`` on a host laid out as Gradescope's (the course
    closed to others, the Python install open): the kernel runs as a dedicated uid, sees none
    of the course's files, leaves nothing in the host's ``/var/tmp``, and finds its fonts."""
    hosts = pytest.importorskip("tests.user_host")
    from autograder.grading.sandbox.kernel import KERNEL_UID

    if hosts.unavailable():
        pytest.skip(hosts.unavailable())
    marker = f"autograder-probe-{os.getpid()}-user"
    with hosts.user_host() as host:
        secrets = [str(host.course / p) for p in ("course.yml", "tests/hidden", "solutions")]
        nb = nbformat.read(submission / "explore.ipynb", as_version=4)
        probe = KERNEL_PROBE % {"secrets": secrets, "marker": marker}
        nb.cells.insert(0, nbformat.v4.new_code_cell(probe))
        nbformat.write(nb, submission / "explore.ipynb")
        out, db = host.root / "out", host.root / "db"
        db.mkdir()
        try:
            done = host.run(
                "grade", ASSIGNMENT, str(submission), "--out", str(out), "--sandbox", "user",
                "--part", "notebook", "--db", f"sqlite:///{db / 'gradebook.db'}",
            )  # fmt: skip
            escaped = Path("/var/tmp", marker).exists()
        finally:
            Path("/var/tmp", marker).unlink(missing_ok=True)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads((out / submission.name / "results.json").read_text())
        assert graded_exists(db), (json.dumps(results)[:3000], done.stderr[-2000:])
        graded = db / "nbgrader" / "autograded" / submission.name / ASSIGNMENT / "explore.ipynb"
        report, everything = _probe_report(graded)
    flags = results["extra_data"]["flags"]
    assert report["uid"] >= KERNEL_UID, report
    assert report["read"] == [], f"the kernel saw {report['read']}"
    assert not escaped, f"the host's /var/tmp kept what the kernel wrote; flags: {flags}"
    assert "Fontconfig error" not in everything
    assert "no-sandbox" not in flags
