"""The notebook stage's Jupyter kernel, started under the same backend as the worker.

nbgrader runs a notebook's hidden test cells in the same kernel as the student's cells, by
design, so the kernel is where the notebook's student code runs. :func:`prepare_kernel` writes a
kernel spec named ``python3`` (the name the notebooks ask for) whose command starts
``ipykernel`` under the batch's backend, and returns the environment that makes Jupyter find it
first and the ``KernelManager`` settings. nbclient talks to the kernel over Unix sockets
(``transport = "ipc"``) in the runtime folder, so the kernel needs no network.

- ``bwrap``: the kernel sees the folder nbgrader executes the notebook in (the student's notebook
  and ``flows/``), its runtime folder, the Python install read-only and ``/etc/fonts`` (so
  matplotlib finds its fonts), nothing else: not the gradebook, the source notebook or the
  course repository; no network.
- ``user``: the kernel runs as a dedicated unprivileged uid (:data:`KERNEL_UID`, one per notebook
  graded at once, distinct from the workers'), started by this module's launcher as root, which
  opens only the path down to the notebook's folder (every sibling closed to others), hands that
  folder and the connection file to the uid, enters a new network namespace (where the kernel
  refuses, the notebook is flagged) and drops privileges. Afterwards :meth:`Kernel.close` kills
  every process of the uid and removes what it left in the world-writable ``/tmp``,
  ``/var/tmp`` and ``/dev/shm``.
- ``none``: a plain kernel as the grading user; the notebook is flagged ``no-sandbox``.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from autograder.grading.sandbox.base import Backend, python_roots
from autograder.grading.sandbox.bwrap import BubblewrapBackend
from autograder.grading.sandbox.unprivileged import BASE_UID, UserBackend, remove_files_of

KERNEL_NAME = "python3"
# + slot: the kernels' uids, after the main workers' (BASE_UID + slot) and the evaluation
# workers' (BASE_UID + 512 + slot): at 500, a 13th notebook at once took an evaluator's uid
KERNEL_UID = BASE_UID + 1024
NO_NETWORK_MARK = "no-network-namespace"  # written by the launcher where unshare failed
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
READ_ONLY_EXTRAS = ("/etc/fonts", "/var/cache/fontconfig")  # matplotlib's fonts
SHARED_TMP_MARK = "no-mount-namespace"  # written by the launcher where it got no private /tmp
PRIVATE_TMP_MB = 256
CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18

_slots: set[int] = set()
_slots_lock = threading.Lock()


@dataclass
class Kernel:
    """A prepared kernel spec: the environment and ``KernelManager`` settings to give nbgrader."""

    env: dict[str, str]
    manager: dict[str, str]
    runtime: Path  # the marks the launcher leaves are beside it, in a folder the kernel can't reach
    uid: int | None = None  # the dedicated uid (``user`` backend)
    flags: list[str] = field(default_factory=list)

    def close(self) -> list[str]:
        """End whatever the kernel left; returns the flags to add to the submission."""
        if self.uid is not None:
            UserBackend.kill_user(self.uid)
            remove_files_of(self.uid)
            with _slots_lock:
                _slots.discard(self.uid - KERNEL_UID)
            if (_marks(self.runtime) / NO_NETWORK_MARK).exists():
                self.flags.append(
                    "no network namespace for the notebook kernel: the host refused one, so "
                    "the notebook could reach the network"
                )
            if (_marks(self.runtime) / SHARED_TMP_MARK).exists():
                self.flags.append(
                    "no mount namespace for the notebook kernel: it shared /tmp, /var/tmp and "
                    "/dev/shm with the host (what it left there was removed)"
                )
        return self.flags


def prepare_kernel(
    backend: Backend, course_root: Path, workdir: Path, runtime: Path, folder: Path | None = None
) -> Kernel:
    """Write the kernel spec under ``runtime`` for ``backend``.

    ``course_root``: nbgrader's course folder (holds the source notebook and the gradebook);
    ``workdir``: where nbgrader executes the notebook, inside it; ``runtime``: a fresh folder
    for the spec, the connection file and the sockets; ``folder``: the folder the kernel works
    in and may write (``bwrap`` shows it at ``workdir``), apart from ``workdir``, where the
    grader, as root, writes the executed notebook: a link the kernel planted there would
    redirect that write (or the reads after it) to any file of the host. ``None``: ``workdir``.
    """
    folder = folder or workdir
    home = runtime / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HOME": str(home),
        "TMPDIR": str(home),
        "MPLCONFIGDIR": str(home),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "PYTHONPATH": str(folder if isinstance(backend, UserBackend) else workdir),
        "PATH": "/usr/bin:/bin",
    }
    kernel_argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    uid = None
    flags: list[str] = []
    if isinstance(backend, BubblewrapBackend):
        binds = [(str(folder), str(workdir), True), (str(runtime), str(runtime), True)]
        binds += [(p, p, False) for p in READ_ONLY_EXTRAS if os.path.isdir(p)]
        argv = backend.wrap(kernel_argv, binds=binds, chdir=str(workdir), env=env)
    elif isinstance(backend, UserBackend):
        uid = KERNEL_UID + _take_slot()
        UserBackend.kill_user(uid)
        spec = {"uid": uid, "root": str(course_root), "open": [str(folder), str(runtime)]}
        spec["env"] = env
        _marks(runtime).mkdir(mode=0o700)  # root's: the kernel cannot remove what is said there
        launcher = [sys.executable, "-I", "-m", __name__, json.dumps(spec)]
        argv = [*launcher, *kernel_argv]
    else:
        argv = kernel_argv
        flags += list(backend.flags)
    spec_dir = runtime / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    kernel_spec = {"argv": argv, "display_name": f"Python 3 ({backend.name})", "language": "python"}
    if uid is None and not isinstance(backend, BubblewrapBackend):
        kernel_spec["env"] = env
    (spec_dir / "kernel.json").write_text(json.dumps(kernel_spec, indent=1))
    manager = {
        "transport": "ipc",
        "ip": str(runtime / "ipc"),
        "connection_file": str(runtime / "connection.json"),
    }
    jupyter = {"JUPYTER_PATH": str(runtime), "JUPYTER_RUNTIME_DIR": str(runtime)}
    return Kernel(jupyter, manager, runtime, uid, flags)


def sandboxed_kernel(workdir: Path, runtime: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The ``bwrap`` kernel alone: ``(environment, KernelManager settings)``."""
    backend = BubblewrapBackend()
    problem = backend.unavailable()
    if problem is not None:
        raise RuntimeError(f"no sandbox for the notebook kernel: {problem}")
    kernel = prepare_kernel(backend, runtime.parent, workdir, runtime)
    return kernel.env, kernel.manager


def _marks(runtime: Path) -> Path:
    """Where the launcher says what the host refused the kernel (beside its runtime folder)."""
    return runtime.with_name(runtime.name + "-marks")


def _take_slot() -> int:
    with _slots_lock:
        slot = next(i for i in range(len(_slots) + 1) if i not in _slots)
        _slots.add(slot)
        return slot


def _open_only(root: Path, targets: list[Path]) -> None:
    """Let others pass from ``root`` down to each target and nowhere else: every folder on
    the way gets ``--x`` for others, every other entry in those folders loses their access."""
    on_way = {root}
    for target in targets:
        on_way.update(p for p in target.parents if p.is_relative_to(root))
    for folder in sorted(on_way):
        os.chmod(folder, (stat.S_IMODE(os.lstat(folder).st_mode) & ~0o077) | 0o011)
        for entry in folder.iterdir():
            if entry not in on_way and entry not in targets and not entry.is_symlink():
                os.chmod(entry, stat.S_IMODE(os.lstat(entry).st_mode) & ~0o077)


def _private_tmp(libc: ctypes.CDLL, keep: list[Path]) -> bool:  # pragma: no cover - launcher
    """A mount namespace with an empty size-capped tmpfs on each world-writable folder, and the
    folders in ``keep`` (the course folder, the Python install) bound back in where they lie
    below one; False where the host refuses."""
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
        return False
    handles = {path: os.open(path, os.O_PATH) for path in keep}  # the host's, once covered
    options = f"size={PRIVATE_TMP_MB}m,mode=1777".encode()
    try:
        for folder in WORLD_WRITABLE:
            if os.path.isdir(folder) and libc.mount(
                b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options
            ):
                return False
            for path, fd in handles.items():
                if path.is_relative_to(folder):
                    for step in [*reversed(path.parents), path]:  # passable, whatever the umask
                        if step.is_relative_to(folder) and step != Path(folder):
                            step.mkdir(exist_ok=True)
                            step.chmod(0o711)
                    source = f"/proc/self/fd/{fd}".encode()
                    if libc.mount(source, str(path).encode(), None, MS_BIND | MS_REC, None):
                        return False
    finally:
        for fd in handles.values():
            os.close(fd)
    return True


def _launch(spec_text: str, argv: list[str]) -> None:  # pragma: no cover - runs as the kernel
    """As root: open the notebook's folder to the kernel's uid, then become it and exec."""
    spec = json.loads(spec_text)
    uid, runtime = int(spec["uid"]), Path(spec["open"][-1])
    targets = [Path(p) for p in spec["open"]]
    _open_only(Path(spec["root"]), targets)
    connection = Path(argv[argv.index("-f") + 1])
    for target in targets:
        for path in [target, *target.rglob("*")]:
            os.chown(path, uid, uid, follow_symlinks=False)
    os.chown(connection, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        (_marks(runtime) / NO_NETWORK_MARK).touch()
    if not _private_tmp(libc, [Path(spec["root"]), *python_roots()]):
        (_marks(runtime) / SHARED_TMP_MARK).touch()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    os.chdir(targets[0])
    os.execve(argv[0], argv, spec["env"])


if __name__ == "__main__":  # pragma: no cover - the launcher, started by Jupyter as root
    _launch(sys.argv[1], sys.argv[2:])
