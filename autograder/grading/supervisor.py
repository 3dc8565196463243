"""The grader's side of a submission: start its harness, collect its results, watch the clock.

:class:`Supervisor` forks one harness per submission (:mod:`autograder.grading.harness`) from a
warm fork server that has already imported torch, numpy, pytest and the harness, so a submission
costs a ``fork`` rather than a fresh interpreter. The harness runs the hidden suites and starts
the submission's sandboxed worker itself; both it and this process are trusted, and neither runs
student code. Results arrive as JSON lines.

The harness enforces each test's clock; this process enforces the submission's
(``limits.submission_timeout_s``) and kills a harness that goes silent, which takes its worker
with it (``--die-with-parent``, a parent-death signal). Every collected test gets an outcome.
Leaving the ``with`` block (Ctrl-C included) kills every harness still running.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from _pytest.config import default_plugins

from autograder.config import Assignment, Limits
from autograder.errors import AutograderError
from autograder.grading import harness, leaderboard, sandbox
from autograder.grading.models import Artifact, LeaderboardEntry, SuiteRun, TestOutcome
from autograder.grading.output_drain import read_tail
from autograder.grading.sandbox.base import clean_up_after

# torch._dynamo rebinds torch.manual_seed & co. when first imported (lazily, by optimizers):
# import it up front so that it happens before the snapshot, not during a test. pytest imports
# its built-in plugins in every pytest.main; here once, in the server, for every child.
PRELOAD = [
    "torch",
    "torch._dynamo",
    "numpy",
    "pytest",
    *(f"_pytest.{name}" for name in default_plugins),
    "autograder.grading.harness",
    "autograder.grading.remote",
]
STATUSES = ("passed", "failed", "error", "skipped", "timeout", "crashed", "memory")
MAX_LINE = 16 * 1024 * 1024  # bytes of one message: artifacts are density grids, not more
MAX_LOG = 20_000  # characters of the logs kept in SuiteRun.log (for staff)
# Beyond a test's own limit, how long a harness may stay silent: killing and restarting a
# worker, and a cold start of the next one.
SILENCE_MARGIN_S = 180.0


class DevicePool:
    """Hands each running child the least busy GPU (as a ``CUDA_VISIBLE_DEVICES`` value)."""

    def __init__(self, devices: list[str]) -> None:
        self._busy = dict.fromkeys(devices, 0)
        self._lock = threading.Lock()

    def acquire(self) -> str | None:
        with self._lock:
            if not self._busy:
                return None
            device = min(self._busy, key=lambda d: self._busy[d])
            self._busy[device] += 1
            return device

    def release(self, device: str | None) -> None:
        if device is not None:
            with self._lock:
                self._busy[device] -= 1


def visible_gpus() -> list[str]:
    """The GPUs this host lets us use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    # Counting devices does not create a CUDA context here, and children fork from the server.
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class _Children:
    """The grading children running now, so that closing the supervisor kills them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[multiprocessing.process.BaseProcess] = set()
        self.closed = False

    def start(self, process: multiprocessing.process.BaseProcess) -> None:
        with self._lock:  # no child may start after kill_all has looked
            if self.closed:
                raise AutograderError("grading stopped: the supervisor was closed")
            process.start()
            self._running.add(process)

    def forget(self, process: multiprocessing.process.BaseProcess) -> None:
        with self._lock:
            self._running.discard(process)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._running if p.pid is not None]

    def kill_all(self) -> None:
        """Kill every running child's process group, and refuse to start new ones."""
        with self._lock:
            self.closed = True
            for process in self._running:
                _kill(process)


class Supervisor:
    """Runs the hidden suites on prepared workspaces; ``run`` may be called from many threads."""

    def __init__(
        self,
        assignment: Assignment,
        *,
        limits: Limits | None = None,
        tests_dir: Path | None = None,
        gpus: list[str] | None = None,
        sandbox_name: str = "auto",
        backend: sandbox.Backend | None = None,  # chosen by the caller (wins over the name)
        start_method: str = "forkserver",
    ) -> None:
        self.assignment = assignment
        self.limits = limits or assignment.limits
        self.tests_dir = Path(tests_dir or assignment.hidden_tests_dir).resolve()
        # One torch thread per process: the suites' networks are tiny, and measured on 2 cores
        # a second intra-op thread made training ~20% slower (142 vs 182 MAF steps/s); the
        # cores are used by grading submissions side by side (--jobs) instead.
        self.threads = 1
        # refuses here, before any grading
        self.backend = backend if backend is not None else sandbox.choose(sandbox_name)
        self.devices = DevicePool(visible_gpus() if gpus is None else gpus)
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(PRELOAD)
        self._base: Path | None = None
        self._children = _Children()
        self._slots: list[int] = []
        self._slot_lock = threading.Lock()

    @property
    def flags(self) -> tuple[str, ...]:
        """What every result graded here is flagged with (``no-sandbox`` without one)."""
        return self.backend.flags

    def __enter__(self) -> Supervisor:
        self._base = Path(tempfile.mkdtemp(prefix="autograder-"))
        self._base.chmod(0o711)  # a sandbox user may pass through, not list
        self._children = _Children()
        # The harness never writes bytecode: compiled once here, the hidden tests load from it.
        compileall.compile_dir(self.tests_dir, quiet=2)
        if self._context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()
            # The server preloads in the background; one empty child waits for it, so the
            # imports are paid here, once, and not by the first submission.
            warm = self._context.Process(target=_nothing, daemon=True)
            warm.start()
            warm.join()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The runs still in flight (other threads, after Ctrl-C) end with an AutograderError.
        self._children.kill_all()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def running(self) -> list[int]:
        """Process ids of the harnesses running now."""
        return self._children.pids()

    def _slot(self) -> int:
        with self._slot_lock:
            slot = next(i for i in range(len(self._slots) + 1) if i not in self._slots)
            self._slots.append(slot)
            return slot

    def _free(self, slot: int) -> None:
        with self._slot_lock:
            self._slots.remove(slot)

    def run(
        self, workspace: Path, *, parts: list[str] | None = None, only: list[str] | None = None
    ) -> SuiteRun:
        """Grade ``workspace`` (a folder holding ``flows/``) and return every test's outcome
        (``only``: just these node ids)."""
        if self._base is None:
            raise AutograderError("Supervisor.run called outside its `with` block")
        started = time.monotonic()
        run_dir = Path(tempfile.mkdtemp(dir=self._base))
        run_dir.chmod(0o711)
        device = self.devices.acquire()
        slot = self._slot()
        try:
            job = harness.Job(
                workspace=Path(workspace).resolve(),
                base=run_dir,
                tests_dir=self.tests_dir,
                log_path=run_dir / "harness.log",
                limits=self.limits,
                backend=self.backend,
                parts=parts,
                only=only,
                ignore=tuple(
                    self.tests_dir / f"test_{part}.py" for part in self.assignment.unselected_parts
                ),
                slot=slot,
                threads=self.threads,
                cuda_devices=device,
            )
            grading = _Grading(job, deadline=started + self.limits.submission_timeout_s)
            for flag in self.backend.flags:
                grading.flag(flag)
            grading.run(self._context, self._children)
            suite = grading.suite()
            logs = [run_dir / "worker.log", *sorted(run_dir.glob("*/worker.log")), job.log_path]
            # Each log its share: what student code printed is never crowded out by pytest's.
            suite.log = "".join(read_tail(log, MAX_LOG // len(logs)) for log in logs)
        finally:
            self._free(slot)
            self.devices.release(device)
            shutil.rmtree(run_dir, ignore_errors=True)
        suite.wall_time_s = time.monotonic() - started
        return suite


class OnDemandSupervisor:
    """The :class:`Supervisor`, started on first use: its warm fork server costs seconds, which a
    batch that only resumes never pays."""

    def __init__(self, start: Callable[[], Supervisor]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._supervisor: Supervisor | None = None

    def __enter__(self) -> OnDemandSupervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def run(
        self, workspace: Path, *, parts: list[str] | None = None, only: list[str] | None = None
    ) -> SuiteRun:
        with self._lock:
            if self._supervisor is None:
                self._supervisor = self._stack.enter_context(self._start())
        return self._supervisor.run(workspace, parts=parts, only=only)


def _nothing() -> None:
    """Target of the process that waits for the fork server to be ready."""


def _tail(path: Path) -> str:
    return read_tail(path, MAX_LOG)


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    pid = process.pid
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class _Grading:
    """The supervisor's bookkeeping for one submission's harness."""

    job: harness.Job
    deadline: float
    tests: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> name,part,w
    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    figures: list[LeaderboardEntry] = field(default_factory=list)
    current: str | None = None
    started: bool = False  # the harness collected the suites and said hello
    done: bool = False

    def flag(self, text: str) -> None:
        text = str(text)[:300]
        if text not in self.flags:
            self.flags.append(text)

    def pending(self) -> list[str]:
        return [t for t in self.tests if t not in self.outcomes]

    def record(self, nodeid: str, status: str, message: str, duration: float = 0.0) -> None:
        name, part, weight = self.tests[nodeid]
        self.outcomes[nodeid] = TestOutcome(nodeid, name, part, weight, status, message, duration)  # type: ignore[arg-type]

    def suite(self) -> SuiteRun:
        tests = [self.outcomes[t] for t in self.tests]
        return SuiteRun(
            tests=tests, flags=list(self.flags), artifacts=self.artifacts, leaderboard=self.figures
        )

    def run(self, context: multiprocessing.context.BaseContext, children: _Children) -> None:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=harness.harness_main, args=(self.job, writer), daemon=True)
        try:  # whatever happens from here (Ctrl-C included), the harness does not outlive this
            try:
                children.start(process)
            finally:
                writer.close()
            self._listen(reader.fileno())
        finally:
            reader.close()
            if process.pid is not None:
                _kill(process)
                process.join(10)
            exitcode, pid = process.exitcode, process.pid
            children.forget(process)
            process.close()
            for slot in (self.job.slot, self.job.slot + harness.EVALUATOR_SLOT_OFFSET):
                self.job.backend.reap(slot)  # the main worker's and the evaluation worker's
            if pid is not None:
                clean_up_after(pid, self.job.base)  # a killed harness's cgroups and mounts
        if children.closed:
            raise AutograderError("grading stopped: the supervisor was closed")
        if not self.started:
            log = _tail(self.job.log_path)[-2000:]
            raise AutograderError(
                f"{self.job.tests_dir}: the hidden suite did not start "
                f"(harness exit status {exitcode}); its log:\n{log}"
            )
        self._settle()

    def _listen(self, fd: int) -> None:
        """Read the harness's lines until it is done, dies, or runs out of time."""
        silence = self.job.limits.test_timeout_s + SILENCE_MARGIN_S
        buffer = b""
        heard = time.monotonic()
        while not self.done:
            now = time.monotonic()
            wait = min(heard + silence, self.deadline) - now
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                if time.monotonic() >= self.deadline:
                    seconds = f"{self.job.limits.submission_timeout_s:g}"
                    self.flag(f"timeout: the submission used up its time limit ({seconds} s)")
                    self._close_pending("timeout", f"not run: the submission's {seconds} s ran out")
                else:
                    self._close_pending("error", "the grader's harness stopped answering")
                return
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            heard = time.monotonic()
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._line(json.loads(line))
            if len(buffer) > MAX_LINE:
                raise AutograderError("the grader's harness wrote an oversized line")

    def _line(self, message: dict) -> None:
        kind = message.get("kind")
        if kind == "hello":
            self.started = True
            for test in message["tests"]:
                self.tests[test["nodeid"]] = (test["name"], test["part"], float(test["weight"]))
        elif kind == "start":
            self.current = message["nodeid"]
        elif kind == "result" and message.get("status") in STATUSES:
            self.record(message["nodeid"], message["status"], message["message"], message["s"])
            self.current = None
        elif kind == "flag":
            self.flag(message["text"])
        elif kind == "artifact" and len(self.artifacts) < harness.MAX_ARTIFACTS:
            self.artifacts.append(Artifact(str(message["name"]), message["data"]))
        elif kind == "leaderboard" and len(self.figures) < leaderboard.MAX_ENTRIES:
            self.figures += leaderboard.from_message(message, self.tests)
        elif kind == "done":
            self.done = True

    def _close_pending(self, status: str, message: str) -> None:
        for nodeid in self.pending():
            self.record(nodeid, status, message)

    def _settle(self) -> None:
        """A harness that ended early: the running test and the rest get an outcome."""
        if self.current is not None and self.current not in self.outcomes:
            self.record(self.current, "error", "the grader's harness stopped during this test")
            self.flag(f"grader error: the harness stopped during {self.current}")
        self._close_pending("error", "not run: the grader's harness stopped")
