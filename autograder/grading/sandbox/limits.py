"""Resource limits every backend puts on the worker, and how a worker is killed as a whole.

- ``setrlimit`` in the child before it starts the sandbox: address space (or data segment on a
  GPU, where the CUDA driver reserves terabytes of address space), file size (so 300 MB on
  stdout costs the log nothing: the write fails, and only the test that printed fails), CPU
  seconds (a backstop to the harness's wall clock), open files and core dumps; processes too,
  which the kernel enforces for any uid but root's;
- a cgroup ``pids`` cap where this host lets us create one (root with cgroup v1 or v2): the
  number of processes and threads under the worker, whoever's uid they map to;
- a new session, so that killing the session's process group reaches what is left of it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from autograder.config import Limits

MAX_FILE_BYTES = 64 * 1024 * 1024  # one file written by the worker, its log included
MAX_OPEN_FILES = 1024
PR_SET_PDEATHSIG = 1
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


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


class PidsCgroup:
    """A cgroup with ``pids.max``: caps processes + threads under the worker, for any uid.

    ``path`` is None where cgroups cannot be created here (not root, read-only hierarchy);
    the backends then rely on ``RLIMIT_NPROC`` and say so in their flags.
    """

    def __init__(self, max_pids: int) -> None:
        self.max_pids = max_pids
        self.path: Path | None = None
        if os.geteuid() != 0:
            return
        for root in CGROUP_ROOTS:
            if (root / "cgroup.procs").exists() and _has_pids(root):
                candidate = root / f"autograder-{uuid.uuid4().hex[:12]}"
                try:
                    candidate.mkdir()
                    (candidate / "pids.max").write_text(str(max_pids))
                except OSError:
                    with contextlib.suppress(OSError):
                        candidate.rmdir()
                    continue
                self.path = candidate
                return

    def enter(self) -> None:
        """Called in the child before exec: move this process into the cgroup."""
        if self.path is not None:
            with open(self.path / "cgroup.procs", "w") as handle:
                handle.write(str(os.getpid()))

    def refusals(self) -> int:
        """How many times a fork or thread was refused for ``pids.max`` (0 without a cgroup)."""
        if self.path is None:
            return 0
        try:
            fields = (self.path / "pids.events").read_text().split()
        except OSError:
            return 0
        return int(fields[1]) if len(fields) >= 2 and fields[0] == "max" else 0

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup, then remove it."""
        if self.path is None:
            return
        for _ in range(50):
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            import time

            time.sleep(0.02)
        with contextlib.suppress(OSError):
            self.path.rmdir()
        self.path = None


def _has_pids(root: Path) -> bool:
    if root.name == "pids":
        return True
    try:
        return "pids" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False
