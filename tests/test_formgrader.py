"""What a TA runs, as the README says it: formgrader from the graded course folder.

nbgrader 0.9.6 has no ``nbgrader formgrader`` command; formgrader is a Jupyter server extension,
so ``cd nbgrader && jupyter server`` (or ``jupyter lab``) serves it at ``/formgrader``. The test
grades one notebook through the real batch (``--part notebook``: nbgrader's autograde of the
released notebook, ~20 s), starts that server for real (a free port on 127.0.0.1, a token),
loads the manual-grading page of the student's notebook over HTTP, renders it in headless
Chromium where one is installed, and stops the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from autograder.config import Assignment, Course
from autograder.examples import STUBS, materialize
from autograder.grading.batch import default_extensions, grade_batch

pytestmark = pytest.mark.slow

STUDENT = "alice"
TOKEN = "formgrader-test-token"
START_TIMEOUT_S = 120  # a cold Jupyter server with its extensions, on a loaded machine
# A line of the released notebook that the rendered submission must show.
RELEASED_TEXT = "YOUR ANSWER HERE"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def graded_folder(
    course: Course, assignment: Assignment, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """nbgrader's course folder after grading one student's notebook: ``<tmp>/nbgrader``."""
    root = tmp_path_factory.mktemp("formgrader")
    submission = materialize(assignment, STUBS, root / "submissions" / STUDENT)
    shutil.copyfile(assignment.release_dir / assignment.notebook.file, submission / "explore.ipynb")
    db = f"sqlite:///{root / 'gradebook.db'}"
    grade_batch(
        course,
        assignment,
        [submission],
        root / "out",
        db_url=db,
        parts=["notebook"],
        extensions=default_extensions(course, assignment, db),
        progress=False,
    )
    folder = root / "nbgrader"
    assert (folder / "autograded" / STUDENT / assignment.name / "explore.ipynb").is_file()
    return folder


@pytest.fixture(scope="module")
def server(graded_folder: Path) -> Iterator[str]:
    """``jupyter server`` started in the folder, as the README says; yields its base URL."""
    port = _free_port()
    command = [sys.executable, "-m", "jupyter", "server", "--no-browser", "--ip=127.0.0.1"]
    command += [f"--port={port}", f"--IdentityProvider.token={TOKEN}"]
    if os.geteuid() == 0:  # CI runs as root; Jupyter refuses that unless told
        command.append("--allow-root")
    log = graded_folder.parent / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=graded_folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(graded_folder.parent / "runtime")},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _get(f"{base}/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, (url, response.status)
        return response.read().decode("utf-8", errors="replace")


def _submission_id(folder: Path, assignment: Assignment) -> str:
    from nbgrader.api import Gradebook

    url = f"sqlite:///{folder.parent / 'gradebook.db'}"
    with Gradebook(url) as gradebook:
        return gradebook.find_submission_notebook("explore", assignment.name, STUDENT).id


def test_formgrader_lists_the_student_and_renders_the_notebook(
    server: str, graded_folder: Path, assignment: Assignment
) -> None:
    listing = _get(f"{server}/formgrader/gradebook/{assignment.name}/explore")
    assert "formgrader" in listing.lower()
    page = _get(f"{server}/formgrader/submissions/{_submission_id(graded_folder, assignment)}")
    assert RELEASED_TEXT in page, "the manual-grading page does not show the notebook"
    assert "Fontconfig error" not in page


def test_formgrader_page_renders_in_headless_chromium(
    server: str, graded_folder: Path, assignment: Assignment, tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs it)")
    submission = _submission_id(graded_folder, assignment)
    url = f"{server}/formgrader/submissions/{submission}?token={TOKEN}"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert RELEASED_TEXT in done.stdout, done.stdout[-2000:]
