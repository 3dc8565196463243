"""The harness: runs the hidden suites with pytest, in a process that never runs student code.

One harness per submission, forked by the supervisor from its warm fork server (torch and pytest
already imported). It starts the submission's sandboxed worker (:mod:`remote`, :mod:`sandbox`),
collects the hidden tests, and runs them one by one: the tests reach student code only through
handles, and every expected value and verdict is computed here. Results go to the supervisor as
JSON lines on a pipe that only trusted code writes to.

Per test, the worker's clock is the test's (``limits.test_timeout_s``): a call that outlives it
kills the worker, the test is a ``timeout`` naming the function that was running, and the next
test gets a fresh worker. A part that times out twice forfeits its remaining tests, so a forever
loop costs bounded time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autograder.config import Limits
from autograder.grading.remote import Session, StudentError, WorkerFailure
from autograder.grading.sandbox import Backend

PLUGIN_NAME = "autograder_harness"
TIMEOUTS_PER_PART = 2
MAX_MESSAGE = 2000  # characters of a failure message
MAX_ARTIFACTS = 16
MAX_ARTIFACT_BYTES = 2 << 20  # JSON of one artifact
# The evaluation worker runs beside the main one: a backend that gives each slot its own uid
# (and kills that uid's processes on start) must not give it the main worker's.
EVALUATOR_SLOT_OFFSET = 512


@dataclass
class Job:
    """What one harness runs; everything here comes from the trusted supervisor."""

    workspace: Path  # holds flows/: the student's five files and the course's given files
    base: Path  # the harness's private folder: worker scratch, runtime, logs
    tests_dir: Path
    log_path: Path  # the harness's own stdout/stderr
    limits: Limits
    backend: Backend
    parts: list[str] | None = None
    only: list[str] | None = None  # node ids to run (a rerun of the tests that timed out)
    ignore: tuple[Path, ...] = ()  # suites of parts course.yml does not select: not collected
    slot: int = 0
    threads: int = 1
    cuda_devices: str | None = None  # CUDA_VISIBLE_DEVICES; None: leave as is


def part_of(nodeid: str) -> str:
    """``test_coupling.py::test_x[a]`` -> ``coupling``."""
    return Path(nodeid.split("::")[0]).stem.removeprefix("test_")


def harness_main(job: Job, writer: Any) -> None:
    """Entry point of the harness process (forked from the supervisor's fork server)."""
    os.setsid()  # own process group: the supervisor kills the whole group
    channel = writer.fileno()
    log = os.open(job.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if job.cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_devices
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import torch

    torch.set_num_threads(job.threads)
    session = Session(
        job.backend,
        job.workspace,
        job.base,
        job.limits,
        threads=job.threads,
        slot=job.slot,
        gpu=bool(job.cuda_devices),
    )
    session.launch()  # the worker imports torch while pytest collects
    plugin = HarnessPlugin(job, session, channel)
    args = [
        str(job.tests_dir),
        "--rootdir",
        str(job.tests_dir),
        "-c",
        os.devnull,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:debugging",
        "-p",
        "no:stepwise",
        "--assert=plain",
        *(f"--ignore={path}" for path in job.ignore),
        "-q",
        "--tb=no",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
    ]
    try:
        code = pytest.main(args, plugins=[plugin])
    finally:
        plugin._close_evaluator()
        session.close()
        sys.stdout.flush()  # what pytest said (a collection error, say) reaches the log
        sys.stderr.flush()
    os._exit(0 if code in (0, 1, 5) else 3)


class HarnessPlugin:
    """Registered as ``autograder_harness``: selects tests, takes verdicts, reports them."""

    def __init__(self, job: Job, session: Session, fd: int) -> None:
        # pluggy names a plugin passed to pytest.main by its ``__name__``; the hidden conftest
        # finds the session (and record_artifact) through get_plugin("autograder_harness").
        self.__name__ = PLUGIN_NAME
        self.job, self.session, self.fd = job, session, fd
        self.verdict: tuple[str, str] | None = None
        self.artifacts = 0
        self.figures: dict[str, tuple[float, str]] = {}  # the running test's leaderboard figures
        self.flags_sent: set[str] = set()
        self.part: str | None = None  # the running test's part
        self.deadline: float | None = None  # the running test's
        self._evaluator: Session | None = None
        self._evaluator_part: str | None = None

    def send(self, kind: str, **fields: Any) -> None:
        data = (json.dumps({"kind": kind, **fields}, allow_nan=True) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data) :]

    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line("markers", "weight(w): relative weight of a test in its part")
        config.addinivalue_line("markers", "gpu: needs a CUDA device")
        config.addinivalue_line("markers", "slow: slow test")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.job.parts:
            wanted = set(self.job.parts)
            items[:] = [item for item in items if part_of(item.nodeid) in wanted]
        if self.job.only is not None:
            chosen = set(self.job.only)
            items[:] = [item for item in items if item.nodeid in chosen]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        items = list(session.items)
        self.send("hello", tests=[_test_info(item) for item in items])
        timeouts: dict[str, int] = {}
        limit = self.job.limits.test_timeout_s
        for index, item in enumerate(items):
            part = part_of(item.nodeid)
            if timeouts.get(part, 0) >= TIMEOUTS_PER_PART:
                message = f"not run: {part} already timed out {TIMEOUTS_PER_PART} times"
                self.send("result", nodeid=item.nodeid, status="timeout", message=message, s=0.0)
                continue
            nextitem = items[index + 1] if index + 1 < len(items) else None
            self.verdict, self.figures = None, {}
            self.send("start", nodeid=item.nodeid)
            started = time.monotonic()
            if part != self.part and any(
                "evaluator" in getattr(i, "fixturenames", ()) and part_of(i.nodeid) == part
                for i in items[index:]
            ):
                self.part = part
                self.evaluator().launch()  # imports torch while the part's first test runs
            self.part, self.deadline = part, started + limit
            self.session.deadline = self.deadline
            if self._evaluator is not None:
                self._evaluator.deadline = self.deadline
            try:
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            except BaseException as exc:  # noqa: BLE001 - pytest.exit and the like
                self.verdict = self.verdict or ("error", f"the test was interrupted: {exc!r}")
            finally:
                self.session.deadline = self.deadline = None
                if self._evaluator is not None:
                    self._evaluator.deadline = None
            status, message = self.verdict or ("error", "the test gave no verdict")
            if status == "timeout":
                timeouts[part] = timeouts.get(part, 0) + 1
            self._send_flags()
            if status == "passed":  # a figure counts only if its test's checks held
                for name, (value, order) in self.figures.items():
                    figure = {"name": name, "value": value, "order": order}
                    self.send("leaderboard", nodeid=item.nodeid, **figure)
            self.send(
                "result",
                nodeid=item.nodeid,
                status=status,
                message=message[:MAX_MESSAGE],
                s=time.monotonic() - started,
            )
            self._forget(self.session)
            if nextitem is None or part_of(nextitem.nodeid) != part:
                self._close_evaluator()
            else:
                self._forget(self._evaluator)
        self.send("done", startups=self.session.startups)
        return True

    def evaluator(self) -> Session:
        """The running part's evaluation worker: a second worker on the same submission.

        Started on first use in a part and reused by the part's every test (a fresh worker
        costs about a second), closed after the part's last test. It shares the running test's
        deadline, and its flags reach the results like the main worker's. Checks ask it the
        second direction of a round trip, of a layer rebuilt there (:func:`remote.rebuild`).
        """
        if self._evaluator is not None and self._evaluator_part != self.part:
            self._close_evaluator()
        if self._evaluator is None:
            job = self.job
            self._evaluator = Session(
                job.backend,
                job.workspace,
                job.base / f"evaluator-{self.part}",
                job.limits,
                threads=job.threads,
                slot=job.slot + EVALUATOR_SLOT_OFFSET,
                gpu=bool(job.cuda_devices),
            )
            self._evaluator_part = self.part
            self._evaluator.deadline = self.deadline
        return self._evaluator

    def _close_evaluator(self) -> None:
        if self._evaluator is not None:
            self._send_flags()
            self.session.startups.extend(self._evaluator.startups)
            self._evaluator.close()
            self._evaluator = self._evaluator_part = None

    def _forget(self, session: Session | None) -> None:
        """Drop the test's objects in a worker (between tests, so nothing builds up)."""
        if session is not None and session.alive:
            session.end_test()  # nothing a test's calls started outlives the test
            session.deadline = time.monotonic() + 30
            try:
                session.request("forget", {}, label="cleaning up")
            except WorkerFailure:
                pass
            finally:
                session.deadline = None
            self._send_flags()

    def _send_flags(self) -> None:
        for session in (self.session, self._evaluator):
            if session is None:
                continue
            session.check_limits()
            for text in session.flags:
                if text not in self.flags_sent:
                    self.flags_sent.add(text)
                    self.send("flag", text=text)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        outcome = yield
        if outcome.exception is not None:
            self.verdict = _verdict("setup", outcome.exception)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        outcome = yield
        self.verdict = _verdict("call", outcome.exception)

    def record_artifact(self, name: str, data: dict[str, Any]) -> None:
        """Send ``data`` for the feedback pictures (computed here, by the hidden tests)."""
        if self.artifacts >= MAX_ARTIFACTS:
            return
        text = json.dumps(data, allow_nan=True)
        if len(text) <= MAX_ARTIFACT_BYTES:
            self.artifacts += 1
            self.send("artifact", name=str(name)[:100], data=data)

    def record_leaderboard(self, name: str, value: float, order: str) -> None:
        """Hold a figure for Gradescope's leaderboard (checked by :mod:`.leaderboard`) until the
        running test's verdict; it is sent only if the test passes."""
        self.figures[name] = (value, order)


def _verdict(phase: str, exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "passed", ""
    if isinstance(exc, pytest.skip.Exception):
        return "skipped", str(exc)
    if isinstance(exc, WorkerFailure):
        return exc.status, str(exc)
    if isinstance(exc, StudentError):
        return "error", str(exc)
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):
        return ("failed" if phase == "call" else "error"), str(exc) or "the check failed"
    return "error", f"{type(exc).__name__}: {exc}"


def _test_info(item: pytest.Item) -> dict[str, Any]:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    name = doc.strip().splitlines()[0].strip() if doc.strip() else item.nodeid
    marker = item.get_closest_marker("weight")
    weight = float(marker.args[0]) if marker and marker.args else 1.0
    return {"nodeid": item.nodeid, "name": name, "part": part_of(item.nodeid), "weight": weight}
