"""The worker's stdout/stderr: drained as it comes, kept bounded, read back as a tail."""

from __future__ import annotations

import os
import threading
from pathlib import Path

MAX_LOG_KEPT = 20_000  # characters of the worker's output kept for staff
MAX_LOG_HEAD = 1 << 20  # bytes of the worker's output written to its log, per start


def read_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a log file, decoded ("" when there is none); never the whole."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


class OutputDrain(threading.Thread):
    """Reads the worker's stdout/stderr as it comes and keeps a bounded part of it.

    The first :data:`MAX_LOG_HEAD` bytes go to the log file, then only a rolling tail; the rest
    is counted and dropped. Printing never fails or blocks the worker, and 300 MB on stdout
    costs the harness a read loop, not memory.
    """

    def __init__(self, fd: int, path: Path) -> None:
        super().__init__(daemon=True)
        self.fd, self.path = fd, path
        self.start()

    def run(self) -> None:
        written, dropped, tail = 0, 0, b""
        with open(self.path, "ab") as log:
            while chunk := os.read(self.fd, 1 << 16):
                if written < MAX_LOG_HEAD:
                    keep = chunk[: MAX_LOG_HEAD - written]
                    log.write(keep)
                    written += len(keep)
                    chunk = chunk[len(keep) :]
                if chunk:
                    dropped += len(chunk)
                    tail = (tail + chunk)[-MAX_LOG_KEPT:]
            if dropped:
                log.write(f"\n[... {dropped} bytes of output dropped; the last ones:]\n".encode())
                log.write(tail)
        os.close(self.fd)


__all__ = ["MAX_LOG_HEAD", "MAX_LOG_KEPT", "OutputDrain", "read_tail"]
