"""The batch stage that grades the explore notebook: nbgrader's ``autograde``, in a child process.

The course directory is :func:`autograder.notebook.course_directory`'s, with the student's
files added::

    <course>/source/<assignment>/explore.ipynb            the TA's source (solutions, hidden tests)
    <course>/submitted/<student>/<assignment>/...         the student's notebook + their ``flows/``
    <course>/autograded/<student>/<assignment>/...        Autograde: executed, with grades
    <course>/gradebook.db                                  nbgrader's database for that run

**Isolation.** nbgrader executes the student's notebook in a Jupyter kernel (a subprocess) with
a per-cell timeout (``Execute.timeout`` = ``limits.test_timeout_s``). The whole autograde runs
in a child process of its own (``python -m autograder.grading.notebook_stage``: nbgrader
``chdir``-s, which a threaded batch must not see) in a new session, with an address-space cap
(``limits.memory_mb``) that the kernel inherits, one BLAS thread, and a wall-clock bound
(``limits.submission_timeout_s``) after which the child's whole process group (kernel included)
is killed. The kernel itself starts under the batch's sandbox backend
(:mod:`autograder.grading.sandbox.kernel`): in bubblewrap with ``bwrap``, as a dedicated
unprivileged user with ``user`` (flagged where it gets no network namespace), flagged
``no-sandbox`` with ``none``. It sees the folder the notebook runs in and nothing else of the
course (not the gradebook, not the source notebook, not the course files), over Unix sockets.
Residual risk: nbgrader runs the hidden test cells in that same kernel, so a notebook can forge
its own cells' outputs (its own 10 points, nothing else). The child's database is private to the
submission; :mod:`autograder.gradebook` copies the scores into the course's gradebook.

**Outcomes.** One :class:`TestOutcome` per graded cell, ``part="notebook"``, its points as
weight: an autograded test cell passes when nbgrader gave it full points; a written answer is
``pending`` (graded by hand in formgrader), or ``failed`` when left as released.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from autograder.config import PACKAGE, Assignment, Course
from autograder.errors import AutograderError
from autograder.grading.extensions import StageContext
from autograder.grading.models import TestOutcome
from autograder.grading.sandbox import Backend
from autograder.grading.sandbox.kernel import Kernel, prepare_kernel
from autograder.grading.sandbox.unsandboxed import NoSandbox
from autograder.grading.scoring import NOTEBOOK_PART
from autograder.grading.unpack import find_extra_file
from autograder.nbgrader_course import save_autograded
from autograder.nbgrader_db import database_url
from autograder.notebook import (
    GradeCell,
    course_directory,
    grade_cells,
    nbgrader_config,
    notebook_file,
    notebook_id,
    run_converter,
)

PENDING = "graded by hand by a TA (pending)"
KERNEL_MANAGER_VARIABLE = "AUTOGRADER_KERNEL_MANAGER"  # the parent's KernelManager settings


def notebook_stage(
    context: StageContext, *, formgrader: Path | None = None, db_url: str | None = None
) -> list[TestOutcome]:
    """The batch stage: autograde the submission's notebook against the prepared workspace
    (the course's given files + the student's). A notebook that is missing (or refused) earns 0
    of the notebook's points, so every report and the gradebook agree on the maximum.

    ``formgrader``: nbgrader's course folder (:mod:`autograder.nbgrader_course`) that receives
    the graded notebook, for formgrader and ``generate_feedback``; ``db_url`` is the gradebook
    its configuration names.
    """
    if context.parts is not None and NOTEBOOK_PART not in context.parts:
        return []
    name = notebook_file(context.assignment)
    found = find_extra_file(context.submission, name)
    if found.data is None:
        if found.refusal is not None:
            why = f"{found.path} in your submission was refused: it is {found.refusal}"
        else:
            why = f"{name} is not in your submission (put it beside {PACKAGE}/)"
        return [
            _outcome(name, cell, None, {}, None, missing=why)
            for cell in grade_cells(context.assignment)
        ]
    keep = None
    if formgrader is not None:
        keep = _Formgrader(formgrader, context.course, context.assignment, context.name, db_url)
    return autograde(
        context.course,
        context.assignment,
        found.data,
        context.workspace,
        context.name,
        keep=keep,
        backend=context.backend,
        flags=context.flags,
    )


def notebook_fingerprint(assignment: Assignment, submission: Path) -> bytes:
    """What the stage reads from ``submission`` beyond the student files, for the batch's
    content key: the notebook's bytes, ``b""`` when there is none."""
    return find_submitted_notebook(assignment, submission) or b""


def find_submitted_notebook(assignment: Assignment, submission: Path) -> bytes | None:
    """The notebook's bytes in a submission (folder or zip): at its top, or one folder down
    beside ``flows/``; ``None`` when there is none (or it was refused: a link, too large)."""
    return find_extra_file(submission, notebook_file(assignment)).data


@dataclass(frozen=True)
class _Formgrader:
    """Where a graded notebook is kept for the TAs: nbgrader's course folder."""

    folder: Path
    course: Course
    assignment: Assignment
    student: str
    db_url: str | None

    def save(self, graded: Path) -> None:
        url = database_url(self.course, self.db_url)
        save_autograded(self.folder, self.course, self.assignment, self.student, graded, url)


def autograde(
    course: Course,
    assignment: Assignment,
    notebook: bytes,
    workspace: Path,
    student: str,
    *,
    keep: _Formgrader | None = None,
    backend: Backend | None = None,
    flags: list[str] | None = None,
) -> list[TestOutcome]:
    """Run nbgrader's ``autograde`` on a student's notebook; one outcome per graded cell.

    ``workspace`` holds the ``flows/`` package to import (the course's given files with the
    student's files). ``keep``: where the executed, graded notebook goes for the TAs.
    ``backend``: the sandbox the kernel runs under (:mod:`.sandbox.kernel`; default ``none``);
    what it flags is appended to ``flags``.
    """
    from nbgrader.api import Gradebook, MissingEntry

    name = notebook_file(assignment)
    with course_directory(assignment) as root:
        submitted = root / "submitted" / student / assignment.name
        shutil.copytree(workspace / PACKAGE, submitted / PACKAGE)
        (submitted / name).write_bytes(notebook)
        workdir = root / "autograded" / student / assignment.name
        # The kernel writes only its own copy (see prepare_kernel): nbgrader's folders, where
        # the grader reads and writes as root, are never the kernel's to plant links in.
        folder = root / "kernel-work"
        shutil.copytree(workspace / PACKAGE, folder / PACKAGE)
        kernel = prepare_kernel(backend or NoSandbox(), root, workdir, root / "kernel", folder)
        try:
            error = _autograde_in_child(course, assignment, root, student, kernel)
        finally:
            for flag in kernel.close():
                if flags is not None and flag not in flags:
                    flags.append(flag)
        graded = root / "autograded" / student / assignment.name / name
        if keep is not None and graded.is_file():
            keep.save(graded)
        errors = _cell_errors(graded) if graded.is_file() else {}
        scores: dict[str, float | None] = {}
        if error is None:
            url = nbgrader_config(course, assignment, root).CourseDirectory.db_url
            with Gradebook(url) as gradebook:
                try:
                    nb = gradebook.find_submission_notebook(
                        notebook_id(assignment), assignment.name, student
                    )
                    scores = {grade.name: grade.auto_score for grade in nb.grades}
                except MissingEntry:
                    error = "nbgrader recorded no grades for the notebook"
    return [
        _outcome(name, cell, scores.get(cell.grade_id), errors, error)
        for cell in grade_cells(assignment)
    ]


def _outcome(
    name: str,
    cell: GradeCell,
    score: float | None,
    errors: dict[str, str],
    error: str | None,
    *,
    missing: str | None = None,
) -> TestOutcome:
    outcome = TestOutcome(
        nodeid=f"{name}::{cell.grade_id}",
        name=f"{name}: {cell.title}",
        part=NOTEBOOK_PART,
        weight=cell.points,
        status="failed",
    )
    if missing is not None:
        outcome.message = missing  # failed: the notebook's points are in the maximum, earned 0
    elif error is not None:
        outcome.status, outcome.message = "error", error
    elif cell.manual:
        if score is None:
            outcome.status, outcome.message = "pending", PENDING
        else:
            outcome.message = "no answer written (the cell is as released)"
    elif score is not None and score >= cell.points:
        outcome.status = "passed"
    else:
        outcome.message = errors.get(cell.grade_id, "the cell wrote to stderr or did not run")
    return outcome


def _autograde_in_child(
    course: Course, assignment: Assignment, root: Path, student: str, kernel: Kernel
) -> str | None:
    """Run this module's ``_child_main`` (below) bounded; ``None`` or what went wrong."""
    limits = assignment.limits
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    env.update(kernel.env)  # Jupyter finds the prepared kernel spec first
    env[KERNEL_MANAGER_VARIABLE] = json.dumps(kernel.manager)
    # __name__: this module as the batch imported it (never "__main__" here).
    command = [sys.executable, "-m", __name__, str(course.root), assignment.name]
    command += [str(root), student]
    child = subprocess.Popen(
        command,
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: the kernel dies with it
    )
    try:
        output, _ = child.communicate(timeout=limits.submission_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return f"the notebook did not finish within {limits.submission_timeout_s:g} s"
    finally:
        _kill_group(child.pid)
    if child.returncode != 0:
        tail = output.decode("utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
        return f"nbgrader autograde failed: {tail[0]}"
    return None


def _kill_group(pid: int) -> None:
    # A kernel left behind (nbgrader normally shuts it down) must not outlive its notebook.
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _cell_errors(graded: Path) -> dict[str, str]:
    """``grade_id -> "Ename: value"`` for graded cells that raised; no traceback (it quotes
    the hidden tests' code)."""
    import nbformat

    nb = nbformat.read(graded, as_version=4)
    errors: dict[str, str] = {}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        for output in cell.get("outputs", []):
            if grade_id and output.output_type == "error":
                errors[grade_id] = f"{output.ename}: {output.evalue}".strip()
    return errors


def _child_main(argv: list[str]) -> int:
    """``python -m autograder.grading.notebook_stage REPO ASSIGNMENT COURSE_DIR STUDENT``:
    generate the assignment in the course directory's database, then autograde the student's
    notebook."""
    from nbgrader.converters import Autograde, GenerateAssignment

    from autograder.config import load_course

    repo, name, root, student = argv
    os.umask(0o077)  # what nbgrader writes (the source notebook, the gradebook) stays private
    course = load_course(Path(repo))
    assignment = course.assignment(name)
    memory = int(assignment.limits.memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # the kernel inherits it
    config = nbgrader_config(course, assignment, Path(root))
    run_converter(GenerateAssignment, config, assignment, "generate_assignment")
    config.CourseDirectory.student_id = student
    # The kernel (student cells and hidden test cells) under the batch's backend, prepared by
    # the parent (sandbox.kernel): IPC sockets and a connection file in its runtime folder.
    for key, value in json.loads(os.environ[KERNEL_MANAGER_VARIABLE]).items():
        setattr(config.KernelManager, key, value)
    run_converter(Autograde, config, assignment, "autograde")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child_main(sys.argv[1:]))
    except AutograderError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
