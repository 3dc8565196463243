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
from autograder.grading.sandbox.cgroup import WorkerCgroup, submission_cgroup, worker_chain
from autograder.grading.sandbox.space import is_full, mount_scratch, unmount

# The worker's own code: copied next to the submission, since the sandbox cannot see the
# course repository (where the ``autograder`` package lives).
RUNTIME_FILES = ("worker.py", "protocol.py", "probes.py")
# What a worker shares with the host when the kernel refuses it a namespace (Docker without
# CAP_SYS_ADMIN refuses both to the ``user`` backend).
SHARED_NAMESPACES = {
    "net": "no network namespace here (the host refused one): student code could reach the network",
    "mnt": "no mount namespace here (the host refused one): student code shared /tmp, /dev/shm "
    "and /var/tmp with the host (what it left there was removed)",
}


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


class Containment:
    """What holds one worker: its cgroup and whether its scratch folder is a capped tmpfs."""

    def __init__(self, cgroup: WorkerCgroup, capped: bool, scratch: Path) -> None:
        self.cgroup, self.capped, self.scratch = cgroup, capped, scratch
        self.usage = ""
        self.ram_dirs: tuple[str, ...] = ()  # the sandbox's own tmpfs folders (``/tmp``...)
        self.shared: tuple[str, ...] = ()  # namespaces the host refused it (``net``, ``mnt``)

    def entering(self, then: Callable[[], None] | None) -> Callable[[], None]:
        """``then`` preceded by joining the cgroup (as root, before any uid is dropped)."""

        def setup() -> None:
            self.cgroup.enter()
            if then is not None:
                then()

        return setup

    def limits_hit(self, pid: int) -> list[str]:
        flags = self.cgroup.limits_hit()
        worker = worker_chain(pid)[-1]  # inside bwrap's monitors: sees the sandbox's /tmp
        folders = [str(self.scratch)] if self.capped else []
        folders += [f"/proc/{worker}/root{d}" for d in self.ram_dirs]
        if any(is_full(folder) for folder in folders):
            flags.append("disk limit reached (its writable space is full)")
        return flags + self.unenforced()

    def unenforced(self) -> list[str]:
        """What this host let no limit enforce (said in every result it grades)."""
        missing = {
            "memory": "no memory cgroup here: memory is capped per process, not per submission",
            "cpu": "no cpu cgroup here: a submission's CPU share is not capped",
            "pids": "no pids cgroup here: processes are capped per uid only",
        }
        flags = [missing[c] for c in self.cgroup.missing]
        flags += [SHARED_NAMESPACES[n] for n in self.shared]
        if not self.capped:
            flags.append("scratch folder not capped here (no tmpfs mount): disk is unlimited")
        return flags

    def release(self, spec: WorkerSpec) -> None:
        """Kill what is left, free the cgroup and the scratch filesystem."""
        throttled = self.cgroup.throttled_s()
        self.cgroup.remove()
        if self.capped:
            unmount(spec.scratch)
            self.capped = False
        peak = self.cgroup.peak / 2**20
        self.usage = f"memory peak {peak:.0f} MB, CPU quota throttled {throttled:.1f} s"


class Backend:
    """A way to start the worker; subclasses say how, and whether it works on this host."""

    name = "?"
    flags: tuple[str, ...] = ()  # what every result graded with this backend is flagged with
    signal_status = False  # whether an exit status 128 + N means "killed by signal N"

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        raise NotImplementedError

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        """Start the worker described by ``spec``; it must be killable by :meth:`kill`."""
        raise NotImplementedError

    def kill(self, process: subprocess.Popen, spec: WorkerSpec) -> None:
        """Kill the worker and every process it started, then reap it; free its cgroup and
        its scratch filesystem (a summary of what it used is left in ``process.usage``)."""
        from autograder.grading.sandbox.limits import kill_session

        kill_session(process)
        box: Containment | None = getattr(process, "box", None)
        if box is not None:
            box.release(spec)
            process.usage = box.usage  # type: ignore[attr-defined]

    def contain(self, spec: WorkerSpec) -> Containment:
        """The worker's cgroup and capped scratch folder, made before it starts."""
        caps = (spec.limits.memory_mb, float(max(1, spec.threads)), spec.limits.max_processes)
        cgroup = WorkerCgroup(*caps, parent=submission_cgroup(*caps))
        return Containment(cgroup, mount_scratch(spec.scratch, spec.limits.disk_mb), spec.scratch)

    def start_directly(
        self,
        spec: WorkerSpec,
        then: Callable[[], None] | None = None,
        box: Containment | None = None,
    ) -> subprocess.Popen:
        """The worker as a child of this process (no mount namespace), in its own session,
        with the limits applied, in ``box``'s cgroup, and ``then`` run between fork and exec
        (e.g. dropping to a uid)."""
        from autograder.grading.sandbox.limits import preexec

        box = box or self.contain(spec)
        env = {
            "HOME": str(spec.scratch),
            "TMPDIR": str(spec.scratch / "tmp"),
            "MPLCONFIGDIR": str(spec.scratch / "tmp"),
            "PATH": "/usr/bin:/bin",
            "AUTOGRADER_SANDBOX": self.name,
            **spec.env,
        }
        process = subprocess.Popen(
            self.worker_argv(spec, str(spec.runtime), str(spec.submission)),
            cwd=spec.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=spec.log,
            stderr=spec.log,
            pass_fds=(spec.requests, spec.replies),
            start_new_session=True,
            preexec_fn=preexec(spec.limits, gpu=spec.gpu, then=box.entering(then)),
        )
        process.box = box  # type: ignore[attr-defined]
        return process

    def limits_hit(self, process: subprocess.Popen) -> list[str]:
        """Flags for limits the running worker ran into that it could not report itself."""
        box: Containment | None = getattr(process, "box", None)
        return [] if box is None else box.limits_hit(process.pid)

    def end_test(self, process: subprocess.Popen) -> int:
        """Kill what the test's calls started, all but the worker; how many were killed."""
        box: Containment | None = getattr(process, "box", None)
        if box is None or not box.cgroup.folders:
            return 0
        return box.cgroup.kill(keep=set(worker_chain(process.pid)))

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
        *interpreter_links(sys.executable, sys.prefix),
    }
    roots: list[Path] = []
    for path in sorted(Path(p).resolve() for p in paths if p and os.path.isdir(p)):
        if not any(path.is_relative_to(root) for root in roots):
            roots.append(path)
    return roots


def interpreter_links(executable: str, prefix: str) -> set[str]:
    """Folders the interpreter is reached through: each hop of ``executable``'s symlinks
    and each venv's ``home`` down to the base install (a venv made by another venv's python
    links to that venv's ``bin/``, which links on to the base)."""
    folders: set[str] = set()
    pending = [executable]
    while prefix and os.path.isfile(os.path.join(prefix, "pyvenv.cfg")) and len(folders) < 64:
        home = _venv_home(os.path.join(prefix, "pyvenv.cfg"))
        if not home or home in folders:
            break
        folders.add(home)
        pending += [os.path.join(home, name) for name in ("python3", "python")]
        prefix = os.path.dirname(home)
    for path in pending:
        for _ in range(40):  # a symlink loop ends here
            if not os.path.exists(path):
                break
            folders.add(os.path.dirname(os.path.abspath(path)))
            if not os.path.islink(path):
                break
            path = os.path.join(os.path.dirname(path), os.readlink(path))
    return folders


def _venv_home(config: str) -> str:
    try:
        with open(config) as handle:
            for line in handle:
                key, _, value = line.partition("=")
                if key.strip() == "home":
                    return value.strip()
    except OSError:
        pass
    return ""


def clean_up_after(harness: int, base: Path) -> None:
    """After a harness (pid ``harness``) ended, perhaps killed: free the cgroups its workers
    had and the capped filesystems left mounted under its folder ``base``."""
    from autograder.grading.sandbox.cgroup import sweep
    from autograder.grading.sandbox.space import unmount_under

    sweep(harness)
    unmount_under(base)
