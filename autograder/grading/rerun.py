"""A test that timed out is run once more, alone, before it costs points.

Submissions graded side by side (``--jobs``) share the machine, so a neighbour can slow a correct
test past its clock. After the batch's parallel jobs have finished, each submission whose tests
timed out has exactly those tests run again, one submission at a time with no other job running
(:func:`rerun_alone`), and the rerun's outcome is the test's. Tests forfeited without running
(``not run: <part> already timed out twice``) are not rerun: they never started. The feedback
says so: the test's message and a flag name the rerun.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from autograder.config import Assignment
from autograder.grading.models import SuiteRun
from autograder.grading.unpack import collect_submission
from autograder.grading.workspace import prepare_workspace, student_file_names

RERUN_NOTE = "rerun alone after timing out"


class _Runs(Protocol):
    def run(
        self, workspace: Path, *, parts: list[str] | None = None, only: list[str] | None = None
    ) -> SuiteRun: ...


def timed_out(run: SuiteRun) -> list[str]:
    """Node ids of the tests that ran and timed out (not those forfeited before running)."""
    return [
        t.nodeid
        for t in run.tests
        if t.status == "timeout"
        and not t.message.startswith("not run")
        and RERUN_NOTE not in t.message  # rerun already (a resumed submission)
    ]


def rerun_alone(
    assignment: Assignment, submission: Path, run: SuiteRun, supervisor: _Runs
) -> SuiteRun | None:
    """``run`` with its timed-out tests replaced by a rerun of just those; ``None`` when none
    timed out."""
    nodeids = timed_out(run)
    if not nodeids:
        return None
    files = collect_submission(submission, student_file_names(assignment))
    with tempfile.TemporaryDirectory(prefix="autograder-rerun-") as scratch:
        workspace = prepare_workspace(assignment, files, Path(scratch))
        again = supervisor.run(workspace, only=nodeids)
    return merge(run, again)


def merge(run: SuiteRun, again: SuiteRun) -> SuiteRun:
    """The rerun's outcomes in place of the first ones, each saying it was rerun."""
    fresh = {t.nodeid: t for t in again.tests}
    tests, flags = [], list(run.flags)
    for test in run.tests:
        new = fresh.get(test.nodeid)
        if new is None:
            tests.append(test)
            continue
        note = f"{RERUN_NOTE} ({test.message})"
        message = f"{new.message}; {note}" if new.message else note
        tests.append(replace(test, status=new.status, message=message, duration_s=new.duration_s))
        flags.append(f"{RERUN_NOTE}: {test.name} ({new.status} on the rerun)"[:300])
    flags += [f for f in again.flags if f not in flags]
    # The rerun's figures in place of the first run's for the same tests (a test that timed out
    # had none: figures come only from tests that passed).
    board = [e for e in run.leaderboard if e.nodeid not in fresh] + again.leaderboard
    return replace(run, tests=tests, flags=list(dict.fromkeys(flags)), leaderboard=board)
