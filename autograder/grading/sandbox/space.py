"""Capped space for the worker: its scratch folder on a tmpfs of its own, with a size and inodes.

As root (with ``CAP_SYS_ADMIN``) the scratch folder becomes a ``tmpfs`` mount of ``disk_mb``
megabytes and ``disk_mb * INODES_PER_MB`` inodes: a write past either fails with ``ENOSPC``
inside the sandbox, the pages are charged to the memory cgroup of the worker that wrote them,
and unmounting frees everything at once. Where the mount is refused (a container without
``CAP_SYS_ADMIN``) the folder stays on the host's disk and the result says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from pathlib import Path

INODES_PER_MB = 32  # 512 MB -> 16384 files and folders: plenty for a package and its output
FULL_BYTES = 1 << 20  # "full" when less than this is left (a filler stops short of 0 bytes)
FULL_INODES = 8
MNT_DETACH = 2


def mount_scratch(scratch: Path, disk_mb: int) -> bool:
    """Put ``scratch`` (and what it holds now) on a capped tmpfs; False where refused."""
    if os.geteuid() != 0:
        return False
    staged = scratch.with_name(scratch.name + ".pre")
    scratch.rename(staged)
    scratch.mkdir()
    options = f"size={disk_mb}m,nr_inodes={disk_mb * INODES_PER_MB},mode=0711"
    libc = ctypes.CDLL(None, use_errno=True)
    mounted = libc.mount(b"tmpfs", os.fsencode(scratch), b"tmpfs", 0, options.encode()) == 0
    if mounted:
        shutil.copytree(staged, scratch, dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(staged)
    else:
        scratch.rmdir()
        staged.rename(scratch)
    return mounted


def unmount(path: Path) -> None:
    """Detach the tmpfs at ``path`` (its pages are freed when the last user is gone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(path), MNT_DETACH)


def unmount_under(base: Path) -> None:
    """Detach every mount below ``base`` (after a harness was killed before its clean-up)."""
    prefix = str(Path(base).resolve()) + "/"
    with contextlib.suppress(OSError):
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            unmount(Path(point.replace("\\040", " ")))


def is_full(path: Path | str) -> bool:
    """Whether the filesystem at ``path`` is (nearly) out of space or inodes."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    no_inodes = stat.f_files > 0 and stat.f_favail < FULL_INODES
    return stat.f_bavail * stat.f_frsize < FULL_BYTES or no_inodes
