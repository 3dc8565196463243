"""A host laid out for the ``user`` sandbox backend, the way Gradescope's ``setup.sh`` does it.

The ``user`` backend (:mod:`autograder.grading.sandbox.unprivileged`) runs student code as a
dedicated uid and needs (see its ``unavailable()``): the course files closed to other users, a
Python install open to them, and a temp folder they can pass through. On this root CI machine
neither holds for the repository (readable by all) nor for the Python install (under ``/root``),
so :func:`user_host` makes

- ``course/``: a copy of the course (``course.yml``, ``autograder/``, ``solutions/``,
  ``assignments/``, ``tests/hidden/``), mode 700;
- the Python install open to others at its own path, in a private mount namespace of the
  grader's own (nothing changes on the host; the mounts end with the grader);
- ``tmp/``: the grader's ``TMPDIR``, mode 1777;

and :meth:`UserHost.command` runs ``python -m autograder ...`` there. Usable by any test that
must grade (or start a notebook kernel) under ``user`` for real.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

COURSE_PARTS = ("course.yml", "autograder", "solutions", "assignments", "tests/hidden")


@dataclass
class UserHost:
    """A laid-out host: run the grader with :meth:`run` (or build argv with :meth:`command`)."""

    root: Path  # mode 711: passable by the sandbox users, not listable
    course: Path  # the course copy, closed to others (mode 700)
    python: Path  # where the Python install is held while the folder above it is covered
    tmp: Path  # TMPDIR of the grader (mode 1777)

    def command(self, *args: str, unprivileged: bool = False) -> list[str]:
        """``python -m autograder *args`` in a mount namespace of its own where the Python
        install is open to others at its own path (its binary may carry an absolute rpath):
        the closed folder above it is covered by an empty tmpfs (mode 755) into which the
        install alone is bound back.

        ``unprivileged``: as in a Docker container without ``CAP_SYS_ADMIN`` and without a
        writable cgroup tree: ``/sys/fs/cgroup`` is covered by an empty tmpfs and the grader
        runs with ``CAP_SYS_ADMIN`` out of its bounding set (no namespace, no mount)."""
        base = Path(sys.base_prefix)
        closed = next((p for p in [*reversed(base.parents), base] if not _passable(p)), None)
        script = 'exec "$@"'
        if closed is not None:
            script = (
                f'mount --bind "{base}" "{self.python}" && '
                f'mount -t tmpfs -o mode=755 tmpfs "{closed}" && mkdir -p "{base}" && '
                f'mount --bind "{self.python}" "{base}" && '
                f'mount -o remount,bind,ro "{base}" && {script}'
            )
        if unprivileged:
            script = "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup && " + script.replace(
                'exec "$@"', 'exec setpriv --bounding-set -sys_admin "$@"'
            )
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", sys.executable, "-m", "autograder", *args,
        ]  # fmt: skip

    def run(
        self, *args: str, timeout: float = 600, unprivileged: bool = False
    ) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["TMPDIR"] = str(self.tmp)
        return subprocess.run(
            self.command(*args, unprivileged=unprivileged),
            cwd=self.course,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def set_limits(self, **limits: float) -> None:
        """Write ``limits`` into every assignment's ``limits:`` of the copy's course.yml."""
        import yaml

        path = self.course / "course.yml"
        data = yaml.safe_load(path.read_text())
        for assignment in data["assignments"].values():
            assignment.setdefault("limits", {}).update(limits)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def _passable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXOTH)


def unavailable() -> str | None:
    """Why this host cannot be laid out so (not root, no ``unshare``), or None."""
    if os.geteuid() != 0:
        return "laying out a user-backend host needs root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "no unshare/mount binaries"
    venv = Path(sys.prefix)
    if venv != Path(sys.base_prefix) and not all(map(_passable, [*venv.parents, venv])):
        return f"the grader runs in a venv that others cannot reach ({venv})"
    return None


@contextmanager
def user_host() -> Iterator[UserHost]:
    """A fresh layout under ``/tmp`` (removed afterwards)."""
    root = Path(tempfile.mkdtemp(prefix="user-host-", dir="/tmp"))
    try:
        root.chmod(0o711)
        course = root / "course"
        course.mkdir(mode=0o700)
        course.chmod(0o700)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for part in COURSE_PARTS:
            source, dest = REPO / part, course / part
            if source.is_dir():
                shutil.copytree(source, dest, ignore=ignore)
            elif source.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)
        python = root / "python"
        python.mkdir(mode=0o755)
        tmp = root / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        yield UserHost(root, course, python, tmp)
    finally:
        shutil.rmtree(root, ignore_errors=True)
