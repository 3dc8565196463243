"""The parent side of grading: one child process per submission, watched with a clock.

:class:`Supervisor` forks every child from a warm fork server that has already imported torch,
numpy, pytest and the runner, so a submission costs a ``fork`` rather than a fresh interpreter.
It reads the child's messages (see :mod:`autograder.grading.runner`), accepting only well-formed
ones that carry the token of the child's first line, in the order the tests were collected.

When a test hangs past ``limits.test_timeout_s``, or the child dies (``os._exit``, a segfault,
the OOM killer), that test is recorded as ``timeout``/``crashed`` with a flag, the whole process
group is killed, and a fresh child runs the tests not yet graded. A part that times out twice
forfeits its remaining tests, so a forever-loop costs at most two test timeouts per part; the
submission as a whole stops at ``limits.submission_timeout_s``. Every collected test gets an
outcome. Leaving the ``with`` block (Ctrl-C included) kills every child still running.
"""

from __future__ import annotations

import ast
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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from _pytest.config import default_plugins

from autograder.config import PACKAGE, Assignment, Limits
from autograder.errors import AutograderError
from autograder.grading import runner
from autograder.grading.models import Artifact, SuiteRun, TestOutcome

# torch._dynamo rebinds torch.manual_seed & co. when first imported (lazily, by optimizers):
# import it up front so that it happens before the snapshot, not during a test. pytest imports
# its built-in plugins in every pytest.main; here once, in the server, for every child.
PRELOAD = [
    "torch",
    "torch._dynamo",
    "numpy",
    "pytest",
    *(f"_pytest.{name}" for name in default_plugins),
    "autograder.grading.runner",
]
STATUSES = ("passed", "failed", "error", "skipped")
MAX_LINE = 16 * 1024 * 1024  # bytes of one message: artifacts are density grids, not more
MAX_LOG = 20_000  # characters of the child's output kept in SuiteRun.log
TIMEOUTS_PER_PART = 2


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
        start_method: str = "forkserver",
    ) -> None:
        self.assignment = assignment
        self.limits = limits or assignment.limits
        self.tests_dir = Path(tests_dir or assignment.hidden_tests_dir).resolve()
        # One torch thread per child: the suites' networks are tiny, and measured on 2 cores a
        # second intra-op thread made training ~20% slower (142 vs 182 MAF steps/s); the cores
        # are used by grading submissions side by side (--jobs) instead.
        self.threads = 1
        self.devices = DevicePool(visible_gpus() if gpus is None else gpus)
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(PRELOAD)
        self._base: Path | None = None
        self._children = _Children()

    def __enter__(self) -> Supervisor:
        self._base = Path(tempfile.mkdtemp(prefix="autograder-"))
        self._base.chmod(0o711)  # the unprivileged child may pass through, not list
        self._children = _Children()
        # Children never write bytecode: compiled once here, the hidden tests load from it.
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
        """Process ids of the grading children running now."""
        return self._children.pids()

    def run(self, workspace: Path, *, parts: list[str] | None = None) -> SuiteRun:
        """Grade ``workspace`` (a folder holding ``flows/``) and return every test's outcome."""
        if self._base is None:
            raise AutograderError("Supervisor.run called outside its `with` block")
        started = time.monotonic()
        run_dir = Path(tempfile.mkdtemp(dir=self._base))
        run_dir.chmod(0o711)
        device = self.devices.acquire()
        try:
            scratch = run_dir / "scratch"
            shutil.copytree(Path(workspace) / PACKAGE, scratch / "submission" / PACKAGE)
            job = runner.Job(
                submission=scratch / "submission",
                scratch=scratch,
                tests_dir=self.tests_dir,
                log_path=run_dir / "child.log",
                limits=self.limits,
                protected=[self.assignment.root, self._base],
                parts=parts,
                threads=self.threads,
                cuda_devices=device,
            )
            grading = _Grading(
                job, self._children, deadline=started + self.limits.submission_timeout_s
            )
            grading.until_done(self._context)
            suite = grading.suite()
            suite.log = _tail(job.log_path)
        finally:
            self.devices.release(device)
            shutil.rmtree(run_dir, ignore_errors=True)
        suite.wall_time_s = time.monotonic() - started
        return suite


def _nothing() -> None:
    """Target of the process that waits for the fork server to be ready."""


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-MAX_LOG:]
    except OSError:
        return ""


@dataclass
class _Attempt:
    """What one child did before it finished, died or was killed."""

    done: bool = False
    current: str | None = None  # node id of the running test, or "import:<part>"
    timed_out: bool = False
    exitcode: int | None = None
    progressed: bool = False
    student_ran: bool = False  # an import or a test started: the submission's code ran


@dataclass
class _Grading:
    """The parent's bookkeeping for one submission across its successive children."""

    job: runner.Job
    children: _Children
    deadline: float
    tests: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> name,part,w
    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    timeouts: dict[str, int] = field(default_factory=dict)  # part -> tests timed out

    def flag(self, text: str) -> None:
        text = text[:300]
        if text not in self.flags:
            self.flags.append(text)

    def pending(self) -> list[str]:
        return [t for t in self.tests if t not in self.outcomes]

    def record(self, nodeid: str, status: str, message: str, duration: float = 0.0) -> None:
        name, part, weight = self.tests[nodeid]
        self.outcomes[nodeid] = TestOutcome(nodeid, name, part, weight, status, message, duration)  # type: ignore[arg-type]

    def suite(self) -> SuiteRun:
        for nodeid in self.pending():  # never reached in practice; nothing may go missing
            self.record(nodeid, "error", "the grader could not run this test")
        tests = [self.outcomes[t] for t in self.tests]
        return SuiteRun(tests=tests, flags=list(self.flags), artifacts=self.artifacts)

    def until_done(self, context: multiprocessing.context.BaseContext) -> None:
        first = True
        while first or self.pending():
            if time.monotonic() >= self.deadline:
                seconds = f"{self.job.limits.submission_timeout_s:g}"
                self.flag(f"timeout: the submission used up its time limit ({seconds} s)")
                for nodeid in self.pending():
                    self.record(nodeid, "timeout", f"not run: the submission's {seconds} s ran out")
                return
            self.job.skip = set(self.outcomes)
            attempt = self._attempt(context, first)
            first = False
            self._settle(attempt)

    def _attempt(self, context: multiprocessing.context.BaseContext, first: bool) -> _Attempt:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=runner.child_main, args=(self.job, writer), daemon=True)
        attempt = _Attempt()
        try:  # whatever happens from here (Ctrl-C included), the child does not outlive this call
            try:
                self.children.start(process)
            finally:
                writer.close()
            self._listen(reader.fileno(), _Channel(self, first), attempt)
        finally:
            reader.close()
            if process.pid is not None:
                _kill(process)  # done or not: nothing more is needed from it; exit takes time
                process.join(5)
                if process.is_alive():
                    _kill(process)
                    process.join()
                attempt.exitcode = process.exitcode
            self.children.forget(process)
            process.close()
        if self.children.closed:
            raise AutograderError("grading stopped: the supervisor was closed")
        if not attempt.student_ran and not attempt.done:
            # Nothing of the submission ran yet: the grader or the hidden suite is broken.
            log = _tail(self.job.log_path)[-2000:]
            raise AutograderError(
                f"{self.job.tests_dir}: the hidden suite did not start "
                f"(child exit status {attempt.exitcode}); its log:\n{log}"
            )
        return attempt

    def _listen(self, fd: int, channel: _Channel, attempt: _Attempt) -> None:
        """Read the child's messages until it is done, dies, or a test outlives its clock."""
        limit = self.job.limits.test_timeout_s
        phase_start = time.monotonic()
        while not attempt.done:
            wait = min(phase_start + limit, self.deadline) - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, wait))
            if not ready:
                attempt.timed_out = True
                return
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            if channel.feed(chunk, attempt):
                phase_start = time.monotonic()

    def _settle(self, attempt: _Attempt) -> None:
        """Give the test (or part) a child died or hung in its outcome, and its flags."""
        if attempt.done:
            return
        current = attempt.current
        if current is None:
            pending = self.pending()
            if not pending:
                return
            current = pending[0]  # the child died between tests: blame the next one to progress
        limit = f"{self.job.limits.test_timeout_s:g}"
        death = _death(attempt.exitcode, self.job.limits.memory_mb)
        if current.startswith("import:"):
            part = current.removeprefix("import:")
            self.job.skip_imports.add(part)
            victims = [t for t in self.pending() if self.tests[t][1] == part]
            if attempt.timed_out:
                self.flag(f"timeout: importing {part}.py ({limit} s)")
                message = f"{part}.py did not finish importing within {limit} s"
                status = "timeout"
                self.timeouts[part] = TIMEOUTS_PER_PART
            else:
                self.flag(f"{death} while importing {part}.py")
                message = f"importing {part}.py ended the process ({death})"
                status = "crashed"
            for nodeid in victims:
                self.record(nodeid, status, message)
            return
        part = self.tests[current][1]
        if attempt.timed_out:
            self.flag(f"timeout: {current} ({limit} s)")
            self.record(current, "timeout", f"took longer than the {limit} s time limit")
            self.timeouts[part] = self.timeouts.get(part, 0) + 1
            if self.timeouts[part] >= TIMEOUTS_PER_PART:
                for nodeid in [t for t in self.pending() if self.tests[t][1] == part]:
                    self.record(nodeid, "failed", f"not run: {part} already timed out twice")
        else:
            self.flag(f"{death} during {current}")
            self.record(
                current,
                "crashed",
                f"the process ended during this test ({death})",
            )


def _death(exitcode: int | None, memory_mb: int) -> str:
    if exitcode is None:
        return "lost the process"
    if exitcode >= 0:
        return f"exited the interpreter (exit status {exitcode})"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGKILL:
        return f"killed by {name} (past the memory limit of {memory_mb} MB?)"
    return f"crashed ({name})"


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    pid = process.pid
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class _Channel:
    """Parses one child's messages; only lines with its token, in collection order, count."""

    def __init__(self, grading: _Grading, first: bool) -> None:
        self.grading = grading
        self.first = first
        self.token: bytes | None = None
        self.buffer = b""
        self.order: list[str] = []  # node ids this child will run, in order

    def feed(self, chunk: bytes, attempt: _Attempt) -> bool:
        """Take bytes; return whether a valid message arrived (the child is alive and well)."""
        self.buffer += chunk
        valid = False
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            valid |= self.line(line, attempt)
        if len(self.buffer) > MAX_LINE:
            self.grading.flag("garbage written to the grader's result channel")
            self.buffer = b""
        return valid

    def line(self, line: bytes, attempt: _Attempt) -> bool:
        token, _, payload = line.partition(b" ")
        if self.token is None:
            self.token = token
        elif token != self.token:
            self.grading.flag("forged message on the grader's result channel (ignored)")
            return False
        try:
            message = ast.literal_eval(payload.decode("utf-8"))
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
            return False
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            return False
        handler = getattr(self, f"on_{message[0]}", None)
        try:
            return bool(handler and handler(attempt, *message[1:]) is not False)
        except (TypeError, ValueError, KeyError, RecursionError):
            return False

    def on_hello(self, attempt: _Attempt, tests: list) -> bool:
        if self.order:
            return False
        grading = self.grading
        for nodeid, name, part, weight in tests:
            if self.first:
                grading.tests[str(nodeid)] = (str(name), str(part), float(weight))
            elif nodeid not in grading.tests:
                return False
            self.order.append(str(nodeid))
        return True

    def on_note(self, attempt: _Attempt, text: str) -> None:
        pass

    def on_flag(self, attempt: _Attempt, text: str) -> None:
        self.grading.flag(str(text))

    def on_import(self, attempt: _Attempt, part: str) -> None:
        attempt.current = f"import:{part}"
        attempt.student_ran = True

    def on_imported(self, attempt: _Attempt, part: str, problem: str) -> None:
        attempt.current = None

    def on_start(self, attempt: _Attempt, nodeid: str) -> bool:
        expected = next((t for t in self.order if t not in self.grading.outcomes), None)
        if attempt.current is not None or nodeid != expected:
            return False
        attempt.current = nodeid
        attempt.student_ran = True
        return True

    def on_artifact(self, attempt: _Attempt, name: str, text: str) -> bool:
        if attempt.current is None or attempt.current.startswith("import:"):
            return False
        if len(self.grading.artifacts) >= runner.MAX_ARTIFACTS:
            return False
        data = json.loads(text)  # JSON text (see runner); ValueError: not a valid message
        if not isinstance(data, dict):
            return False
        self.grading.artifacts.append(Artifact(str(name), data))
        return True

    def on_result(
        self, attempt: _Attempt, nodeid: str, status: str, message: str, duration: float
    ) -> bool:
        if nodeid != attempt.current or status not in STATUSES:
            return False
        self.grading.record(nodeid, status, str(message), float(duration))
        attempt.current = None
        attempt.progressed = True
        return True

    def on_done(self, attempt: _Attempt) -> bool:
        if attempt.current is not None:
            return False
        attempt.done = True
        return True
