"""One cgroup per worker: memory, CPU and processes of the whole submission's process tree.

The cgroup is made under the cgroup the grader itself runs in (``/proc/self/cgroup``), so the
worker never leaves the limits the grader was started under; the child joins it between fork
and exec (:meth:`WorkerCgroup.enter`), before any student code runs. cgroup v2 (one hierarchy)
and v1 (one hierarchy per controller) are both supported; each controller that cannot be used
here is listed in :attr:`WorkerCgroup.missing` and the backends fall back to rlimits for it.

- memory: ``memory_mb`` for every descendant together, tmpfs pages included (the kernel
  charges a page of a RAM-backed file to the cgroup of the process that wrote it); swap is
  refused where the host has it, so the limit cannot be dodged. Past it the kernel's OOM killer
  ends a process of the cgroup, counted in ``oom_kill``;
- cpu: a CFS quota of ``cpus`` CPUs per period, however many processes or sessions the
  submission makes (a session per process would escape the kernel's autogroup fairness);
- pids: ``max_processes`` processes and threads, whoever's uid they map to.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
PREFIX = "autograder-"


def own_cgroups(text: str | None = None) -> dict[str, Path]:
    """Where this process's cgroup of each controller lives: ``{"memory": Path, ...}``;
    ``""`` maps to the cgroup v2 folder (``0::/path``)."""
    if text is None:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return {}
    found: dict[str, Path] = {}
    for line in text.splitlines():
        _, names, path = line.split(":", 2)
        if names == "":
            unified = ROOT / "unified" if (ROOT / "unified").is_dir() else ROOT
            found[""] = unified / path.lstrip("/")
            continue
        for name in names.split(","):
            for mount in (ROOT / name, ROOT / names):
                if (mount / "cgroup.procs").exists():
                    found[name] = mount / path.lstrip("/")
                    break
    return found


class WorkerCgroup:
    """The cgroup(s) of one worker; ``folders`` maps each enforced controller to its folder."""

    def __init__(
        self,
        memory_mb: int,
        cpus: float,
        max_processes: int,
        parent: WorkerCgroup | None = None,
    ) -> None:
        """``parent``: the submission's cgroup, whose limits hold all its workers together
        (without one, the cgroup is made under the grader's own)."""
        self.memory_mb, self.cpus, self.max_processes = memory_mb, cpus, max_processes
        self.parent = parent
        self.folders: dict[str, Path] = {}
        self.v1: dict[str, bool] = {}
        self.peak = 0  # bytes, the highest memory use seen (v1: the kernel's own maximum)
        if os.geteuid() != 0:
            return
        name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"  # the creator's pid: see sweep
        own = own_cgroups()
        for controller in CONTROLLERS:
            if parent is not None:
                base, v1 = parent.folders.get(controller), parent.v1.get(controller, True)
            else:
                base, v1 = own.get(controller) or own.get(""), controller in own
            folder = self._make(base, v1, controller, name)
            if folder is not None:
                self.folders[controller], self.v1[controller] = folder, v1

    @property
    def missing(self) -> list[str]:
        """The controllers this host gave no cgroup for (their limits are not enforced)."""
        return [c for c in CONTROLLERS if c not in self.folders]

    def _make(self, parent: Path | None, v1: bool, controller: str, name: str) -> Path | None:
        if parent is None or not parent.is_dir():
            return None
        if not v1:
            if controller not in _words(parent / "cgroup.controllers"):
                return None
            with contextlib.suppress(OSError):  # let children use it (fails if it has tasks)
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        folder = next((f for f in self.folders.values() if f.parent == parent), None)
        try:
            if folder is None:
                folder = parent / name
                folder.mkdir(exist_ok=True)
            for file, value in self._settings(controller, v1):
                (folder / file).write_text(value)
        except OSError:
            if folder is not None and folder not in self.folders.values():
                with contextlib.suppress(OSError):
                    folder.rmdir()
            return None
        return folder

    def _settings(self, controller: str, v1: bool) -> list[tuple[str, str]]:
        memory = str(self.memory_mb * 1024 * 1024)
        quota = str(int(self.cpus * CPU_PERIOD_US))
        if controller == "memory":
            if not v1:
                return [("memory.max", memory), ("memory.swap.max", "0")]
            settings = [("memory.limit_in_bytes", memory)]
            if (ROOT / "memory" / "memory.memsw.limit_in_bytes").exists():  # swap accounting
                settings.append(("memory.memsw.limit_in_bytes", memory))
            return settings
        if controller == "cpu":
            if not v1:
                return [("cpu.max", f"{quota} {CPU_PERIOD_US}")]
            return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota)]
        return [("pids.max", str(self.max_processes))]

    def enter(self) -> None:
        """Called in the child between fork and exec: move this process into every folder."""
        for folder in dict.fromkeys(self.folders.values()):
            with open(folder / "cgroup.procs", "w") as handle:
                handle.write(str(os.getpid()))

    def pids(self) -> list[int]:
        """Every process in the cgroup now."""
        folder = next(iter(self.folders.values()), None)
        if folder is None:
            return []
        try:
            return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def limits_hit(self) -> list[str]:
        """A flag for each limit the worker's processes ran into so far."""
        flags = [] if self.parent is None else self.parent.limits_hit()
        if self._memory_kills():
            flags.append(f"memory limit reached ({self.memory_mb} MB for all its processes)")
        if _stat(self.folders.get("pids"), "pids.events").get("max", 0):
            flags.append(f"process limit reached ({self.max_processes} processes and threads)")
        return flags

    def throttled_s(self) -> float:
        """Seconds the CPU quota held the worker back (for the staff log; normal under a quota)."""
        stat = _stat(self.folders.get("cpu"), "cpu.stat")
        if "throttled_usec" in stat:
            return stat["throttled_usec"] / 1e6
        return stat.get("throttled_time", 0) / 1e9

    def peak_bytes(self) -> int:
        """The highest memory use of the cgroup so far (0 where unknown)."""
        folder = self.folders.get("memory")
        if folder is not None:
            for file in ("memory.max_usage_in_bytes", "memory.peak"):
                with contextlib.suppress(OSError, ValueError):
                    self.peak = max(self.peak, int((folder / file).read_text()))
                    break
        return self.peak

    def _memory_kills(self) -> int:
        folder = self.folders.get("memory")
        if folder is None:
            return 0
        if (folder / "memory.oom_control").exists():
            return _stat(folder, "memory.oom_control").get("oom_kill", 0)
        return _stat(folder, "memory.events").get("oom_kill", 0)

    def kill(self, keep: frozenset[int] | set[int] = frozenset()) -> int:
        """SIGKILL every process of the cgroup but ``keep``; returns how many were killed."""
        killed: set[int] = set()
        for _ in range(100):
            others = [p for p in self.pids() if p not in keep]
            if not others:
                break
            for pid in others:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.01)
        return len(killed)

    def remove(self) -> None:
        """Kill everything left and remove the folders (their counters are read first)."""
        self.peak_bytes()
        self.kill()
        for folder in dict.fromkeys(self.folders.values()):
            for child in folder.glob(f"{PREFIX}*"):  # a worker's, under a submission's
                _remove_tree(child)
            for _ in range(50):  # a killed process leaves the cgroup a moment after SIGKILL
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
        self.folders = {}


_submissions: dict[tuple[int, int, float, int], WorkerCgroup] = {}


def submission_cgroup(memory_mb: int, cpus: float, max_processes: int) -> WorkerCgroup | None:
    """The cgroup of the submission this process grades (a harness grades one): its limits
    hold all its workers together, the main one and the evaluation one (one CPU per job slot
    for both). Made on first use, removed when the process ends (:func:`sweep`, or at exit)."""
    key = (os.getpid(), memory_mb, cpus, max_processes)
    if key not in _submissions:
        made = WorkerCgroup(memory_mb, cpus, max_processes)
        if not made.folders:
            return None
        if not _submissions:
            atexit.register(_remove_own)
        _submissions[key] = made
    return _submissions[key]


def _remove_own() -> None:
    for (pid, *_), cgroup in _submissions.items():
        if pid == os.getpid():  # not a forked child's copy of its parent's
            cgroup.remove()


def sweep(creator: int) -> None:
    """Remove the cgroups a dead process ``creator`` (a harness killed before its clean-up)
    made, killing what is still in them."""
    for parent in dict.fromkeys(own_cgroups().values()):
        for folder in parent.glob(f"{PREFIX}{creator}-*"):
            _remove_tree(folder)


def _remove_tree(folder: Path) -> None:
    left = WorkerCgroup.__new__(WorkerCgroup)
    left.folders, left.peak = {"pids": folder}, 0
    left.remove()


def worker_chain(pid: int, marker: str = "worker.py", depth: int = 4) -> list[int]:
    """``pid`` and its first-born descendants down to the process running ``marker`` (the
    worker under bwrap's two monitor processes): what a per-test clean-up must not kill.

    The eldest child is taken at each level: an orphan re-parented to the sandbox's init is
    younger than the worker it was forked from.
    """
    chain = [pid]
    for _ in range(depth):
        argv = _cmdline(pid).split(" ")
        if marker in " ".join(argv[1:]) and "bwrap" not in argv[0]:  # bwrap's argv names it too
            break
        children = _children(pid)
        if not children:
            break
        pid = min(children, key=_start_time)
        chain.append(pid)
    return chain


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _start_time(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 1 << 62
    return int(text.rsplit(")", 1)[1].split()[19])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _stat(folder: Path | None, file: str) -> dict[str, int]:
    """``key value`` lines of a cgroup file as a dict (empty where it cannot be read)."""
    if folder is None:
        return {}
    values = {}
    try:
        for line in (folder / file).read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    except OSError:
        pass
    return values
