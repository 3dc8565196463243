"""The harness's side of the worker: a session that starts, calls and kills it, and handles.

A :class:`Handle` names an object that lives in the worker (a student module, a layer, a bound
method) and is used like the object: ``coupling.AffineCoupling(mask)`` returns a handle to the
new layer, ``layer.forward(z)`` returns a fresh ``(x, log_det)`` pair of plain tensors decoded by
:mod:`protocol`. Nothing but data and handles crosses; the harness never imports student code.

Every request has a deadline (the running test's, set by the harness). A request that outlives
it kills the worker (:class:`WorkerTimeout`); a worker that dies answers :class:`WorkerCrashed`;
one that runs out of memory :class:`WorkerMemoryError`; a malformed answer kills it too
(:class:`WorkerMisbehaved`). The next request starts a fresh worker, so one bad call costs one
test. Each of these names the student function that was running (``coupling.AffineCoupling.
forward``), for the feedback.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from autograder.config import PACKAGE, Limits
from autograder.grading import protocol, recipes
from autograder.grading.output_drain import MAX_LOG_KEPT, OutputDrain, read_tail
from autograder.grading.sandbox import Backend, WorkerSpec
from autograder.grading.sandbox.base import make_runtime
from autograder.grading.sandbox.limits import exit_reason

STARTUP_TIMEOUT_S = 120.0  # a cold `import torch` on a loaded host takes seconds, not minutes
PASSED_ENV = ("CUDA_VISIBLE_DEVICES",)
MEMORY_MARKERS = ("can't allocate memory", "Cannot allocate memory", "out of memory")


class WorkerFailure(Exception):
    """The worker could not answer: the test fails with this message, and not as wrong."""

    status = "error"

    def __init__(self, message: str, label: str = "") -> None:
        super().__init__(message)
        self.label = label


class WorkerTimeout(WorkerFailure):
    status = "timeout"


class WorkerCrashed(WorkerFailure):
    status = "crashed"


class WorkerMemoryError(WorkerFailure):
    status = "memory"


class WorkerMisbehaved(WorkerFailure):
    status = "error"


class StudentError(Exception):
    """The student's code raised ``type_name: message`` (at ``where``, a file and line)."""

    def __init__(self, type_name: str, message: str, where: str, label: str) -> None:
        self.type_name, self.message, self.where, self.label = type_name, message, where, label
        at = f" ({where})" if where else ""
        super().__init__(f"{label} raised {type_name}: {message}{at}".strip())


class Session:
    """One submission's worker, restarted as needed; ``close()`` kills whatever is left.

    ``workspace`` holds the ``flows/`` package to serve (the student's files and the given
    ones); each start copies it into a fresh scratch folder under ``base``.
    """

    def __init__(
        self,
        backend: Backend,
        workspace: Path,
        base: Path,
        limits: Limits,
        *,
        threads: int = 1,
        slot: int = 0,
        gpu: bool = False,
    ) -> None:
        self.backend, self.workspace, self.limits = backend, Path(workspace), limits
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o711)  # a sandbox user may pass through to its folders, not list
        self.threads, self.slot, self.gpu = threads, slot, gpu
        self.flags: list[str] = list(backend.flags)
        self.deadline: float | None = None  # time.monotonic() by which the running test ends
        self.generation = 0
        self.log_path = self.base / "worker.log"
        self._process = None
        self._spec: WorkerSpec | None = None
        self._fds: tuple[int, int] | None = None  # (read replies, write requests)
        self._next_id = 0
        self._pending = False
        self._began = 0.0
        self._drain: OutputDrain | None = None
        self.runtime = make_runtime(self.base)
        self.startups: list[float] = []  # seconds each start took (for benchmarks)
        self.book = recipes.Book(lambda value: isinstance(value, Handle))  # see recipes

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start a fresh worker (killing one that runs) and wait until it is ready."""
        self.launch()
        self._await_ready()

    def launch(self) -> None:
        """Start a fresh worker (killing one that runs); the first request waits for it."""
        self.stop()
        self._began = time.monotonic()
        scratch = self.base / f"scratch-{self.generation + 1}"
        shutil.copytree(self.workspace / PACKAGE, scratch / "submission" / PACKAGE)
        (scratch / "tmp").mkdir()
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        log, log_w = os.pipe()
        self._drain = OutputDrain(log, self.log_path)
        spec = WorkerSpec(
            scratch=scratch,
            runtime=self.runtime,
            limits=self.limits,
            requests=requests_r,
            replies=replies_w,
            log=log_w,
            threads=self.threads,
            slot=self.slot,
            gpu=self.gpu,
            # The sandbox starts from an empty environment: the GPU the supervisor chose.
            env={k: os.environ[k] for k in PASSED_ENV if k in os.environ},
        )
        try:
            self._process = self.backend.start(spec)
        finally:
            for fd in (requests_r, replies_w, log_w):
                os.close(fd)
        os.set_blocking(requests_w, False)  # writes honour the test's deadline
        self._spec, self._fds = spec, (replies_r, requests_w)
        self.generation += 1
        self._pending = True

    def _await_ready(self) -> None:
        self._pending = False
        replies_r = self._fds[0]  # type: ignore[index]
        try:
            header, _ = protocol.read_frame(replies_r, time.monotonic() + STARTUP_TIMEOUT_S)
        except protocol.ProtocolError as exc:
            self.stop()
            log = self.log_tail(300)
            raise WorkerCrashed(f"the sandboxed worker did not start ({exc}); {log}") from None
        if header.get("ready") is not True:
            self.stop()
            raise WorkerMisbehaved("the worker's first message was not the expected greeting")
        self.startups.append(time.monotonic() - self._began)

    def stop(self) -> None:
        """Kill the worker and everything it started; remove its scratch folder."""
        self._pending = False
        process, self._process = self._process, None
        if process is not None:
            self._check(process)  # the cgroup's counters, before the kill frees it
            self.backend.kill(process, self._spec)  # type: ignore[arg-type]
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None
        if usage := getattr(process, "usage", ""):  # for the staff log, after its own output
            self.log_tail(0)
            with open(self.log_path, "a") as log:
                log.write(f"\n[grader] worker {self.generation}: {usage}\n")
        if self._spec is not None:
            shutil.rmtree(self._spec.scratch, ignore_errors=True)
            self._spec = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self._process is not None

    def log_tail(self, limit: int = MAX_LOG_KEPT) -> str:
        if self._drain is not None:
            self._drain.join(timeout=1)
        return read_tail(self.log_path, limit)

    def check_limits(self) -> None:
        """Flag the limits the worker ran into (those the OS enforces silently, e.g. processes)."""
        if self._process is not None:
            self._check(self._process)

    def _check(self, process: Any) -> None:
        for text in self.backend.limits_hit(process):
            self.flag(text)

    def end_test(self) -> None:
        """Kill what the test's calls started (every process of the worker's but itself)."""
        if self._process is not None:
            self.check_limits()
            if killed := self.backend.end_test(self._process):
                self.flag(f"{killed} process(es) left running by a test were killed")

    def flag(self, text: str) -> None:
        if text not in self.flags:
            self.flags.append(text[:300])

    # -- requests ----------------------------------------------------------------------------

    def module(self, name: str) -> Handle:
        """A handle to ``flows.<name>``; a module that does not import raises StudentError."""
        return self.request("import", {"module": f"{PACKAGE}.{name}"}, label=name)

    def request(self, op: str, args: dict[str, Any], *, label: str) -> Any:
        """Send one request and return the decoded answer (or raise; see the module doc)."""
        waited = time.monotonic()
        if self._process is None:
            self.launch()
        if self._pending:
            self._await_ready()
            # A (re)start is the grader's time, not the test's: its clock moves on by as much.
            if self.deadline is not None:
                self.deadline += time.monotonic() - waited
        if op == "call" and "seed" not in args:
            args = {**args, "seed": self.book.next_seed()}  # recorded: a rebuild replays it
        elif op == "seed":
            self.book.reseed(int(args["seed"]))
        blobs: list[bytes] = []
        try:
            tree = protocol.encode(args, blobs, self._reference)
        except protocol.ProtocolError as exc:
            raise TypeError(f"the harness cannot send this to the worker: {exc}") from None
        self._next_id += 1
        ident = self._next_id
        replies, requests = self._fds  # type: ignore[misc]
        deadline = self.deadline or (time.monotonic() + self.limits.test_timeout_s)
        try:
            frame = {"id": ident, "op": op, "args": tree}
            protocol.write_frame(requests, frame, blobs, deadline)
            header, reply_blobs = protocol.read_frame(replies, deadline)
            if header.get("id") != ident:
                raise protocol.ProtocolError("an answer to a question that was not asked")
            if "error" in header:
                raise self._error(header["error"], label)
            value = protocol.decode(header.get("ok"), reply_blobs, self._handle)
            self.book.note(op, args, value, self.generation)
            return value
        except protocol.ChannelTimeout:
            seconds = f"{self.limits.test_timeout_s:g}"
            self.stop()
            self.flag(f"timeout: {label} ran past the {seconds} s limit")
            raise WorkerTimeout(f"timed out after {seconds} s in {label}", label) from None
        except (protocol.ChannelClosed, BrokenPipeError):
            reason = self._death()
            self.flag(f"{reason} in {label}")
            raise WorkerCrashed(
                f"the process running your code {reason} in {label}", label
            ) from None
        except protocol.ProtocolError as exc:
            self.stop()
            self.flag(f"malformed answer from the worker in {label}: {exc}")
            raise WorkerMisbehaved(
                f"{label} answered with something that is not plain data ({exc})", label
            ) from None

    def _error(self, error: Any, label: str) -> Exception:
        if type(error) is not dict:
            raise protocol.ProtocolError("malformed error report")
        kind, message, where = (str(error.get(k, ""))[:2000] for k in ("type", "message", "where"))
        if kind == "MemoryError" or any(m in message for m in MEMORY_MARKERS):
            limit = f"{self.limits.memory_mb} MB"
            self.flag(f"memory limit reached ({limit}) in {label}")
            return WorkerMemoryError(f"ran out of memory ({limit} limit) in {label}", label)
        return StudentError(kind, message, where, label)

    def _death(self) -> str:
        process = self._process
        code = None
        if process is not None:
            try:
                code = process.wait(timeout=5)
            except Exception:  # noqa: BLE001 - still alive but closed its channel
                code = None
        self.stop()
        return exit_reason(code, self.backend.signal_status, self.limits, self.flags)

    def _reference(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Handle):
            raise protocol.ProtocolError(f"cannot send a {type(value).__name__}")
        if value._generation != self.generation:
            raise WorkerFailure(
                f"{value._label} belonged to a worker that was restarted", value._label
            )
        return {"$handle": [value._id, list(value._path), ""]}

    def _handle(self, ident: int, path: tuple, name: str) -> Handle:
        return Handle(self, ident, path, name, self.generation)


class Handle:
    """An object in the worker. Attribute access and indexing build paths (no round trip);
    calling sends the call; :func:`fetch` brings back the value itself (data only)."""

    __slots__ = ("_session", "_id", "_path", "_label", "_generation")

    def __init__(
        self, session: Session, ident: int, path: tuple, label: str, generation: int
    ) -> None:
        self._session, self._id, self._path = session, ident, tuple(path)
        self._label, self._generation = label, generation

    def __getattr__(self, name: str) -> Handle:
        if name.startswith("__"):
            raise AttributeError(name)
        return Handle(
            self._session, self._id, (*self._path, name), f"{self._label}.{name}", self._generation
        )

    def __getitem__(self, key: int | str) -> Handle:
        label = f"{self._label}[{key!r}]"
        return Handle(self._session, self._id, (*self._path, key), label, self._generation)

    def __iter__(self):
        raise TypeError(f"{self._label} is an object in the worker, not data")

    def __len__(self) -> int:
        raise TypeError(f"{self._label} is an object in the worker, not data")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.request(
            "call", {"target": self, "args": list(args), "kwargs": kwargs}, label=self._label
        )

    def __repr__(self) -> str:
        return f"<{self._label} in the worker>"


def fetch(handle: Handle) -> Any:
    """The value ``handle`` names, as data (a tensor, a number, a list...; objects as handles)."""
    return handle._session.request("get", {"target": handle}, label=handle._label)


def rebuild(handle: Handle, session: Session) -> Handle:
    """``handle``'s object made again in ``session`` from its recipe (constructor calls replayed
    under their seeds, then ``load_state_dict(strict=True)`` of the original's state, fetched as
    data); nested handles are rebuilt too. See :mod:`autograder.grading.recipes`."""
    return recipes.rebuild(handle, session, Handle)


def randomize(handle: Handle, seed: int = 1234, std: float = 0.3) -> int:
    """Re-draw the trainable parameters of a module in the worker from N(0, std^2)."""
    return handle._session.request(
        "randomize", {"target": handle, "seed": seed, "std": std}, label=handle._label
    )


def trace(handle: Handle, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Call ``handle`` and list the torch functions the call used (as the worker saw them)."""
    return handle._session.request(
        "trace", {"target": handle, "args": list(args), "kwargs": kwargs}, label=handle._label
    )


def recorder(session: Session, stop: dict[str, Any] | None = None) -> Handle:
    """A ``callback(step, loss)`` in the worker recording every step (``worker.Recorder``)."""
    return session.request("recorder", {"stop": stop}, label="callback")
