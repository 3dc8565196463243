"""The Gradescope autograder zip: what it holds, and the whole of it run for real (slow).

The end-to-end test does what Gradescope does, in a fake ``/autograder`` (``AUTOGRADER_ROOT``):
unpack the zip into ``source/``, run ``setup.sh`` with a *fresh* Python 3.10 (Gradescope's base
image has 3.10) into ``venv/`` -- torch and every dependency installed from scratch, which takes
minutes, mostly downloads -- then ``run_autograder`` on the reference solution with a solved
notebook. ``setup.sh``'s ``apt-get`` is skipped (``AUTOGRADER_SKIP_APT``) and torch comes from
pip's own configuration (``AUTOGRADER_TORCH_INDEX=""``) instead of PyTorch's CPU index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import nbformat
import pytest

from autograder.config import Assignment, Course, load_course
from autograder.examples import REFERENCE, materialize
from autograder.gradescope import (
    NOTEBOOK_SOURCE_DIR,
    TORCH_CPU_INDEX,
    shipped_notebook_path,
    write_gradescope_zip,
)
from autograder.notebook import grade_cells, register_notebook, solution_notebook
from tests.conftest import ASSIGNMENT, REPO

SCHEMA = json.loads((REPO / "tests" / "gradescope_results.schema.json").read_text())
# Lines of the source notebook's solution regions (code, written answer) and of a hidden test.
SOLUTION_TEXTS = ("x_next, y_next = x.roll(-1, dims=-1)", "MADE pass per feature")
HIDDEN_TEXT = "flip = Affine(torch.tensor([[-3.0]])"
SETUP_TIMEOUT_S = 3600  # torch (+ its CUDA libraries from PyPI here) and ~100 packages, fresh
RUN_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def autograder_zip(assignment: Assignment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gradescope_zip(assignment, tmp_path_factory.mktemp("zip") / "autograder.zip")


def unpack_zip(archive_path: Path, root: Path) -> Path:
    """``archive_path`` unpacked as Gradescope does, into ``root/source``; returns it."""
    source = root / "source"
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            archive.extract(info, source)
            (source / info.filename).chmod(info.external_attr >> 16)
    return source


def test_zip_has_scripts_grader_suites_and_notebook_but_no_solutions(
    assignment: Assignment, autograder_zip: Path
) -> None:
    with zipfile.ZipFile(autograder_zip) as archive:
        names = set(archive.namelist())
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    assert {"setup.sh", "run_autograder", "course.yml", "pyproject.toml", "README.md"} <= names
    assert "autograder/cli.py" in names and "autograder/grading/notebook_stage.py" in names
    assert f"tests/hidden/{ASSIGNMENT}/conftest.py" in names
    assert f"assignments/{ASSIGNMENT}/flows/base.py" in names
    assert f"assignments/{ASSIGNMENT}/{assignment.notebook.file}" in names
    assert shipped_notebook_path(assignment) in names
    assert shipped_notebook_path(assignment).startswith(f"{NOTEBOOK_SOURCE_DIR}/")
    assert not [n for n in names if n.startswith("solutions/") or "__pycache__" in n]
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111


def test_no_solution_text_anywhere_in_the_zip(autograder_zip: Path) -> None:
    with zipfile.ZipFile(autograder_zip) as archive:
        for name in archive.namelist():
            data = archive.read(name).decode("utf-8", errors="replace")
            for secret in SOLUTION_TEXTS:
                assert secret not in data, f"{name} contains the solution line {secret!r}"


def test_scripts_install_into_a_venv_from_pyproject(autograder_zip: Path, tmp_path: Path) -> None:
    from importlib import metadata

    source = unpack_zip(autograder_zip, tmp_path)
    setup = (source / "setup.sh").read_text()
    run = (source / "run_autograder").read_text()
    for script in ("setup.sh", "run_autograder"):
        subprocess.run(["bash", "-n", str(source / script)], check=True)
    assert f'"torch=={metadata.version("torch").split("+")[0]}"' in setup
    assert TORCH_CPU_INDEX in setup and "AUTOGRADER_TORCH_INDEX" in setup
    assert '-m venv "$VENV"' in setup and '"${PIP[@]}" "$SOURCE"' in setup
    # Only torch is pinned; everything else comes from pyproject.toml's lower bounds.
    assert setup.count("==") == 1
    assert 'PYTHON="$ROOT/venv/bin/python"' in run and '"$PYTHON" -m autograder grade' in run
    assert "--sandbox auto" in run


def test_shipped_notebook_has_hidden_tests_and_no_solutions(autograder_zip: Path) -> None:
    with zipfile.ZipFile(autograder_zip) as archive:
        names = [n for n in archive.namelist() if n.startswith(f"{NOTEBOOK_SOURCE_DIR}/")]
        assert len(names) == 1
        nb = nbformat.reads(archive.read(names[0]).decode(), as_version=4)
    text = "\n".join(cell.source for cell in nb.cells)
    assert HIDDEN_TEXT in text, "autograde needs the hidden tests"
    for secret in SOLUTION_TEXTS:
        assert secret not in text
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def _recorded_cells(course: Course, assignment: Assignment, db: Path) -> list[tuple]:
    """The cells nbgrader's ``generate_assignment`` records from the assignment's source
    notebook: what ``autograde`` later puts back into a student's notebook and checks."""
    from nbgrader.api import Gradebook

    url = f"sqlite:///{db}"
    register_notebook(course, assignment, url)
    with Gradebook(url, course.id) as gradebook:
        notebook = gradebook.find_notebook("explore", assignment.name)
        sources = sorted(
            (c.name, c.cell_type, c.locked, c.source, c.checksum) for c in notebook.source_cells
        )
        grades = sorted((c.name, c.max_score, c.cell_type) for c in notebook.grade_cells)
    return [*sources, *grades]


def test_nbgrader_records_the_same_cells_from_the_shipped_notebook(
    course: Course, assignment: Assignment, autograder_zip: Path, tmp_path: Path
) -> None:
    """The shipped source (solution regions emptied) gives nbgrader exactly the cells, sources,
    checksums and points that the full source does: autograding against it is the same."""
    root = tmp_path / "unpacked"
    source = unpack_zip(autograder_zip, root)
    # What setup.sh does: the shipped notebook where the grader reads the source.
    target = source / assignment.solution_dir.relative_to(assignment.root) / "explore.ipynb"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source / shipped_notebook_path(assignment), target)
    shipped_course = load_course(source)
    shipped = shipped_course.assignment(ASSIGNMENT)
    assert grade_cells(shipped) == grade_cells(assignment)
    expected = _recorded_cells(course, assignment, tmp_path / "full.db")
    assert _recorded_cells(shipped_course, shipped, tmp_path / "shipped.db") == expected


# --- Gradescope, for real ------------------------------------------------------------------


def python310() -> Path | None:
    """A Python 3.10 interpreter from pyenv (Gradescope's version), if this machine has one."""
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        root = Path(done.stdout.strip()) if done.returncode == 0 else None
    else:
        root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob("versions/3.10*/bin/python3.10")) if root else []
    return found[-1] if found else None


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak its own Python into the scripts'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


@pytest.fixture
def gradescope_root(tmp_path: Path) -> Iterator[Path]:
    """A fake ``/autograder``; its venv (~5 GB: torch with its CUDA libraries here) is removed
    afterwards, not left for pytest's retention of the last three runs."""
    root = tmp_path / "autograder"
    yield root
    shutil.rmtree(root / "venv", ignore_errors=True)


def gradescope_env(root: Path, python: Path) -> dict[str, str]:
    """The scripts' environment for a dry run in the fake ``/autograder`` ``root``."""
    return clean_env(
        AUTOGRADER_ROOT=str(root),
        AUTOGRADER_SKIP_APT="1",
        AUTOGRADER_PYTHON=str(python),
        AUTOGRADER_TORCH_INDEX="",  # pip's configuration here, not PyTorch's index
    )


def setup_gradescope(archive: Path, root: Path, python: Path) -> tuple[str, float]:
    """Unpack ``archive`` into ``root/source`` and run its ``setup.sh`` as Gradescope does;
    returns the venv's ``(python version, torch version)`` line and setup's seconds."""
    source = unpack_zip(archive, root)
    started = time.monotonic()
    setup = subprocess.run(
        ["bash", str(source / "setup.sh")],
        cwd=source,
        env=gradescope_env(root, python),
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
    )
    setup_s = time.monotonic() - started
    assert setup.returncode == 0, setup.stdout[-4000:] + setup.stderr[-4000:]
    probe = "import sys, torch; print(sys.version_info[:2], torch.__version__)"
    version = subprocess.run(
        [str(root / "venv" / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Gradescope copies run_autograder to /autograder.
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    return version.strip(), setup_s


def upload_reference(assignment: Assignment, root: Path) -> Path:
    """The reference with its solved notebook (without hidden tests, as a student has it) as
    ``root/submission``, where Gradescope puts the upload."""
    shutil.rmtree(root / "submission", ignore_errors=True)
    submission = materialize(assignment, REFERENCE, root / "submission")
    solution_notebook(assignment, submission)
    return submission


@pytest.mark.slow
def test_setup_then_run_autograder_gives_the_reference_full_marks(
    assignment: Assignment, autograder_zip: Path, gradescope_root: Path
) -> None:
    python = python310()
    if python is None:
        pytest.skip("no Python 3.10 here (Gradescope's version): looked in $(pyenv root)/versions")
    root = gradescope_root
    version, setup_s = setup_gradescope(autograder_zip, root, python)
    assert version.startswith("(3, 10)"), version
    upload_reference(assignment, root)
    started = time.monotonic()
    done = subprocess.run(
        [str(root / "run_autograder")],
        cwd=root,
        env=gradescope_env(root, python),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    run_s = time.monotonic() - started
    print(f"\nsetup.sh: {setup_s:.0f} s; run_autograder: {run_s:.0f} s; venv: {version}")
    assert_full_marks(assignment, root / "results" / "results.json", done)


def assert_full_marks(
    assignment: Assignment, results_file: Path, done: subprocess.CompletedProcess[str]
) -> None:
    """Every module part's points and every autograded notebook cell's; the written answers
    pending (a TA scores them)."""
    assert results_file.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(results_file.read_text())
    jsonschema.validate(results, SCHEMA)
    context = results["output"] + "\n" + done.stdout[-4000:] + done.stderr[-4000:]
    assert "grader error" not in results["extra_data"]["flags"], context
    by_part: dict[str, list[dict]] = {}
    for test in results["tests"]:
        by_part.setdefault(test["tags"][0], []).append(test)
    assert set(by_part) == {*assignment.parts, "notebook"}, context
    for part, points in assignment.parts.items():
        earned = sum(t["score"] for t in by_part[part])  # each rounded to 4 decimals
        assert earned == pytest.approx(points, abs=0.01), f"{part}: {earned} of {points}\n{context}"
    cells = {cell.title: cell for cell in grade_cells(assignment)}
    notebook = by_part["notebook"]
    assert sum(t["max_score"] for t in notebook) == pytest.approx(assignment.notebook.points)
    assert len(notebook) == len(cells)
    for test in notebook:
        manual = any(test["name"].endswith(title) and c.manual for title, c in cells.items())
        if manual:
            assert "status" not in test, f"{test['name']}: not pending\n{context}"
        else:
            assert test.get("status") == "passed", f"{test['name']}: {test['output']}\n{context}"
    autograded = sum(c.points for c in cells.values() if not c.manual)
    expected = sum(assignment.parts.values()) + autograded
    assert results["score"] == pytest.approx(expected), context
    # The leaderboard: the two-moons models' held-out NLL and floor, finite, lower ranks first.
    board = {entry["name"]: entry for entry in results.get("leaderboard", [])}
    for model in ("RealNVP", "MAF"):
        nll = board[f"two moons {model}: held-out NLL (nats)"]
        floor = board[f"two moons {model}: floor, the true density's NLL (nats)"]
        assert 0.2 < floor["value"] < nll["value"] <= 0.6, (nll, floor)
        assert nll["order"] == floor["order"] == "asc"


@pytest.mark.parametrize(
    ("grader", "flag"),
    [
        ("kill -KILL $$", "grader error: out of memory"),  # as the OOM killer does
        ("exit 3", "grader error: exit status 3"),
    ],
    ids=["killed", "failed"],
)
def test_run_autograder_leaves_a_results_json_that_says_why(
    assignment: Assignment, autograder_zip: Path, tmp_path: Path, grader: str, flag: str
) -> None:
    """A grader that dies without results (killed, as for memory; or failing) still leaves a
    valid ``results.json`` naming the reason and, for memory, the setting to raise."""
    root = tmp_path / "autograder"
    source = unpack_zip(autograder_zip, root)
    fake = root / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/usr/bin/env bash\n{grader}\n")
    fake.chmod(0o755)
    (root / "submission").mkdir()
    done = subprocess.run(
        ["bash", str(source / "run_autograder")],
        env=clean_env(AUTOGRADER_ROOT=str(root)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    results = json.loads((root / "results" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert results["score"] == 0 and results["extra_data"]["flags"] == [flag], done.stderr
    if "memory" in flag:
        assert "Autograder Settings" in results["output"]


def test_zip_readme_names_the_autograder_settings(autograder_zip: Path) -> None:
    from autograder.gradescope import NEEDED_MEMORY

    with zipfile.ZipFile(autograder_zip) as archive:
        readme = archive.read("README.md").decode()
    assert readme.startswith("# Gradescope autograder")
    assert "Autograder Settings" in readme and NEEDED_MEMORY in readme
    assert "768 MB" in readme and "# Normalizing flows" in readme  # the project's README after
