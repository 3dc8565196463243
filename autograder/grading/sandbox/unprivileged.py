"""The fallback backend: a dedicated unprivileged user per job slot (needs root).

For hosts that refuse user namespaces (some container platforms): the worker runs as uid
``BASE_UID + slot``, with no supplementary groups, in a private network namespace and a
private mount namespace with capped ``/tmp``, ``/dev/shm`` and ``/var/tmp`` of its own (entered as
root before the drop, where the kernel allows it: a namespace it refuses, as Docker does without
CAP_SYS_ADMIN, is a flag naming it), with the same resource limits and cgroup. The OS
refuses it the course's files only if they are unreadable to others, which :meth:`unavailable`
checks, and its Python install must be readable to it. Killing every process of that uid (a
``kill(-1)`` as that user) ends whatever the submission started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from autograder.errors import AutograderError
from autograder.grading.sandbox.base import Backend, WorkerSpec, python_roots
from autograder.grading.sandbox.space import INODES_PER_MB

BASE_UID = 64000  # uids 64000.. are free on Debian/Ubuntu (reserved for local use)
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 0x4000, 1 << 18
RAM_DIRS = ("/tmp", "/dev/shm", "/var/tmp")


class UserBackend(Backend):
    name = "user"

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "the grader is not root (a dedicated user needs root)"
        repo = Path(__file__).resolve().parents[3]
        if _readable_by_others(repo):
            return f"{repo} is readable by other users (chmod o-rx it for this backend)"
        closed = [r for r in python_roots() if not _reachable_by_others(r)]
        if closed:
            return f"the Python install {closed[0]} is not readable by other users"
        return None

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        if not _reachable_by_others(spec.runtime):
            raise AutograderError(
                f"{spec.runtime}: the sandbox user cannot reach its folder (a folder above it "
                "is closed to other users; set TMPDIR to a folder with mode 711 or 1777)"
            )
        uid = BASE_UID + spec.slot
        box = self.contain(spec)  # mounts the capped scratch folder: owned after
        _own(spec.scratch, uid)
        self.kill_user(uid)  # nothing of an earlier submission in this slot survives

        # Its own /tmp, /dev/shm, /var/tmp: capped tmpfs in a mount namespace of its own; its
        # scratch and runtime folders (under the host's /tmp, often) and the Python install
        # where it lies below one (a venv under /tmp) are bound back in place.
        ram = tuple(d for d in RAM_DIRS if os.path.isdir(d))
        box.ram_dirs = ram
        keep = [str(spec.scratch), str(spec.runtime)]
        keep += [str(r) for r in python_roots() if any(r.is_relative_to(d) for d in ram)]
        mb = spec.limits.disk_mb
        options = f"size={mb}m,nr_inodes={mb * INODES_PER_MB},mode=1777".encode()

        def drop() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.unshare(CLONE_NEWNET)  # best effort: no network where the kernel allows it
            if libc.unshare(CLONE_NEWNS) == 0:
                libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
                held = [os.open(path, os.O_PATH) for path in keep]
                for folder in ram:
                    libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options)
                for path, fd in zip(keep, held, strict=True):
                    os.makedirs(path, exist_ok=True)
                    libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND, None)
                    os.close(fd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

        process = self.start_directly(spec, then=drop, box=box)
        process.uid = uid  # type: ignore[attr-defined]
        # Popen returns after the exec, so the namespaces it has are those it keeps.
        box.shared = shared_namespaces(process.pid)
        if "mnt" in box.shared:
            box.ram_dirs = ()  # the host's own folders: not the sandbox's to fill
        return process

    def kill(self, process: subprocess.Popen, spec: WorkerSpec) -> None:
        super().kill(process, spec)
        self.reap_uid(getattr(process, "uid", BASE_UID + spec.slot))

    def reap(self, slot: int) -> None:
        self.reap_uid(BASE_UID + slot)

    def reap_uid(self, uid: int) -> None:
        """Processes of a dedicated uid outlive a new session: kill them all; and remove what
        it left in the host's ``/tmp``, ``/dev/shm``, ``/var/tmp`` (where it had no mount
        namespace; elsewhere it had none of the host's to write in)."""
        self.kill_user(uid)
        remove_files_of(uid)

    @staticmethod
    def kill_user(uid: int) -> None:
        """SIGKILL every process of ``uid`` (from a child that becomes that user)."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setresuid(uid, uid, uid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def shared_namespaces(pid: int) -> tuple[str, ...]:
    """The namespaces (``net``, ``mnt``) that process ``pid`` shares with this one."""
    shared = []
    for kind in ("net", "mnt"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}"):
                shared.append(kind)
    return tuple(shared)


def remove_files_of(uid: int) -> None:
    """What ``uid`` created at the top of the world-writable folders (only it can write there)."""
    for folder in RAM_DIRS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


def _own(folder: Path, uid: int) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)
    os.chmod(folder, 0o700)


def _readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH)) and _reachable_by_others(
        path.parent
    )


def _reachable_by_others(path: Path) -> bool:
    """Whether every folder down to ``path`` can be passed through by any user."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in [*path.parents, path])
