"""Resource limits every backend puts on the worker, and how a worker is killed as a whole.

- ``setrlimit`` in the child before it starts the sandbox: address space (or data segment on a
  GPU, where the CUDA driver reserves terabytes of address space), file size (so 300 MB on
  stdout costs the log nothing: the write fails, and only the test that printed fails), CPU
  seconds (a backstop to the harness's wall clock), open files and core dumps; processes too,
  which the kernel enforces for any uid but root's;
- the worker's cgroup (:mod:`.cgroup`: memory, CPU and processes of its whole tree) where this
  host lets us create one, joined in the same child before exec;
- a new session, so that killing the session's process group reaches what is left of it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable

from autograder.config import Limits

MAX_FILE_BYTES = 64 * 1024 * 1024  # one file written by the worker, its log included
MAX_OPEN_FILES = 1024
PR_SET_PDEATHSIG = 1


def rlimits(limits: Limits, *, gpu: bool = False) -> list[tuple[int, int]]:
    """``(resource, value)`` pairs for the worker."""
    memory = limits.memory_mb * 1024 * 1024
    return [
        (resource.RLIMIT_DATA if gpu else resource.RLIMIT_AS, memory),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
        (resource.RLIMIT_CPU, int(limits.submission_timeout_s) + 60),
        (resource.RLIMIT_NPROC, limits.max_processes),
    ]


def preexec(
    limits: Limits, *, gpu: bool = False, then: Callable[[], None] | None = None
) -> Callable[[], None]:
    """What the child runs between fork and exec (no Python state of the parent is needed)."""
    caps = rlimits(limits, gpu=gpu)

    def setup() -> None:
        import ctypes

        # Die with the harness, whatever the backend (bwrap also has --die-with-parent).
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past FSIZE a write fails, no kill
        for kind, value in caps:
            soft, hard = resource.getrlimit(kind)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(kind, (value, value))
        if then is not None:
            then()

    return setup


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the worker's process group (it leads its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def exit_reason(code: int | None, signal_status: bool, limits: Limits, flags: list[str]) -> str:
    """How the worker ended, for the feedback: ``code`` is its exit status (negative: the
    signal that killed it; ``signal_status``: 128 + N also means signal N, as bwrap reports
    its child's), ``flags`` what the grader saw (a cgroup's out-of-memory kill)."""
    if code is None:
        return "closed the grader's channel"
    if signal_status and 128 < code < 128 + 65:
        code = 128 - code
    if code >= 0:
        return f"exited (status {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        if any(flag.startswith("memory limit reached") for flag in flags):
            return f"was killed ({name}: memory limit reached, {limits.memory_mb} MB)"
        return f"was killed ({name}; past the {limits.memory_mb} MB memory limit?)"
    if -code == signal.SIGXCPU:
        return "used up its CPU time (SIGXCPU)"
    return f"crashed ({name})"
