"""What every sandbox backend is given, and what it must do with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autograder.config import Limits

# The worker's own code: copied next to the submission, since the sandbox cannot see the
# course repository (where the ``autograder`` package lives).
RUNTIME_FILES = ("worker.py", "protocol.py", "probes.py")


@dataclass
class WorkerSpec:
    """One worker to start: everything here comes from the trusted harness."""

    scratch: Path  # private, writable: holds submission/flows, tmp/ and nothing else
    runtime: Path  # read-only: worker.py and protocol.py
    limits: Limits
    requests: int  # descriptor the worker reads requests from
    replies: int  # descriptor the worker writes replies to
    log: int  # descriptor for the worker's stdout and stderr (capped in size)
    threads: int = 1
    slot: int = 0  # job slot: the ``user`` backend gives each slot its own uid
    gpu: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def submission(self) -> Path:
        return self.scratch / "submission"


class Backend:
    """A way to start the worker; subclasses say how, and whether it works on this host."""

    name = "?"
    flags: tuple[str, ...] = ()  # what every result graded with this backend is flagged with

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        raise NotImplementedError

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        """Start the worker described by ``spec``; it must be killable by :meth:`kill`."""
        raise NotImplementedError

    def kill(self, process: subprocess.Popen, spec: WorkerSpec) -> None:
        """Kill the worker and every process it started, then reap it."""
        from autograder.grading.sandbox.limits import kill_session

        kill_session(process)

    def start_directly(
        self, spec: WorkerSpec, then: Callable[[], None] | None = None
    ) -> subprocess.Popen:
        """The worker as a child of this process (no mount namespace), in its own session,
        with the limits applied and ``then`` run between fork and exec (e.g. dropping to a uid)."""
        from autograder.grading.sandbox.limits import preexec

        env = {
            "HOME": str(spec.scratch),
            "TMPDIR": str(spec.scratch / "tmp"),
            "MPLCONFIGDIR": str(spec.scratch / "tmp"),
            "PATH": "/usr/bin:/bin",
            "AUTOGRADER_SANDBOX": self.name,
            **spec.env,
        }
        return subprocess.Popen(
            self.worker_argv(spec, str(spec.runtime), str(spec.submission)),
            cwd=spec.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=spec.log,
            stderr=spec.log,
            pass_fds=(spec.requests, spec.replies),
            start_new_session=True,
            preexec_fn=preexec(spec.limits, gpu=spec.gpu, then=then),
        )

    def limits_hit(self, process: subprocess.Popen) -> list[str]:
        """Flags for limits the running worker ran into that it could not report itself."""
        return []

    def reap(self, slot: int) -> None:
        """After a harness died or was killed: end what its worker in ``slot`` may have left.

        Nothing to do where the worker dies with its parent (namespaces, a parent-death signal).
        """

    def worker_argv(self, spec: WorkerSpec, runtime: str, submission: str) -> list[str]:
        return [
            sys.executable,
            "-I",  # no PYTHON* variables, no user site, no script folder on sys.path
            "-B",
            f"{runtime}/worker.py",
            submission,
            str(spec.threads),
            str(spec.requests),
            str(spec.replies),
        ]


def make_runtime(parent: Path) -> Path:
    """A fresh folder, readable by everyone, holding a copy of the worker's code."""
    runtime = Path(tempfile.mkdtemp(prefix="runtime-", dir=parent))
    here = Path(__file__).resolve().parents[1]
    for name in RUNTIME_FILES:
        shutil.copyfile(here / name, runtime / name)
        (runtime / name).chmod(0o644)
    runtime.chmod(0o755)
    return runtime


def python_roots() -> list[Path]:
    """Folders the worker's Python needs: the interpreter's install, its site-packages, venvs."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    roots: list[Path] = []
    for path in sorted(Path(p).resolve() for p in paths if p and os.path.isdir(p)):
        if not any(path.is_relative_to(root) for root in roots):
            roots.append(path)
    return roots
