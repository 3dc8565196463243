"""Atomic file writes: a reader (or a resumed batch) sees the old file or the new one, never half.

The bytes go to a temporary file in the same directory (same file system, so the rename is
atomic), which is flushed to disk and then renamed over the target with ``os.replace``.
``mkstemp`` creates it with mode 0600; it first gets the mode any new file would get (``0o666``
less the umask), so a TA, a group or a web server can read what was written, as the umask says.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask: from ``/proc`` where there is one (reading it there changes
    nothing), else by setting it and straight back, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
