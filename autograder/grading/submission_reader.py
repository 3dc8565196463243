"""Read a submission (a folder or a ``.zip``) without following links or reading too much.

A submission is untrusted: a symbolic link (``flows/`` -> the course's ``solutions/``), a hard
link to a file its author cannot read, a device or a 2 GB file would make the grader read what
the student never wrote. So every path component of a folder is opened without following links
(``O_NOFOLLOW`` relative to its parent's descriptor, so a link swapped in after the listing is
refused too), and a file is read only when it is a regular file with one name and at most
:data:`MAX_FILE_BYTES`. Zip entries with absolute paths, ``..`` components, a symlink or other
non-file mode, or an uncompressed size over the caps (zip bombs) are refused the same way.
Every refusal is kept with its reason (:attr:`Entries.refused`), for the student to read.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from autograder.errors import AutograderError

MAX_FILE_BYTES = 2 * 1024 * 1024  # a student file larger than this is not source code
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # uncompressed bytes read from one zip, all entries together
_MAX_DEPTH = 3  # top/flows/x.py: enough for every layout above, cheap on big folders

SYMLINK = "a symbolic link"
NOT_REGULAR = "not a regular file"
UNSAFE_PATH = "an unsafe path (absolute, or with '..')"


def _hard_link(links: int) -> str:
    return f"a hard link (the file has {links} names)"


def _too_large(size: int | None = None) -> str:
    actual = "" if size is None else f", it has {size}"
    return f"larger than the {MAX_FILE_BYTES} bytes a source file may have{actual}"


class SubmissionError(AutograderError):
    """A submission that cannot be read at all (broken zip, empty, unreadable, a link)."""


@contextmanager
def open_entries(submission: Path) -> Iterator[Entries]:
    """The listing of a folder or zip, with its reader; raises :class:`SubmissionError` when the
    submission is a link, missing, empty or unreadable."""
    try:
        mode = os.lstat(submission).st_mode
    except OSError:
        raise SubmissionError(f"{submission.name}: no such file or folder") from None
    if stat.S_ISLNK(mode):
        raise SubmissionError(f"{submission.name}: refused: the submission is {SYMLINK}")
    entries: Entries
    if stat.S_ISDIR(mode):
        entries = _FolderEntries(submission)
    elif stat.S_ISREG(mode):
        entries = _ZipEntries(submission)
    else:
        raise SubmissionError(f"{submission.name}: refused: the submission is {NOT_REGULAR}")
    try:
        if not entries.names() and not entries.refused:
            raise SubmissionError(f"{submission.name}: the submission is empty")
        yield entries
    finally:
        entries.close()


class Entries:
    """File names (POSIX, relative) of a submission, what was refused, and a bounded reader."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.refused: dict[str, str] = {}  # path -> reason, for every refusal while listing

    def names(self) -> set[str]:
        raise NotImplementedError

    def read(self, name: str, refused: dict[str, str]) -> bytes | None:
        """The bytes of ``name``; ``None`` (and ``refused[name]`` set) when it is refused."""
        raise NotImplementedError

    def close(self) -> None:
        pass


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class _FolderEntries(Entries):
    """A folder, listed and read through descriptors that never follow a link."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        try:
            self._fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise SubmissionError(_unreadable(root.name, exc)) from None
        self._names: set[str] = set()
        try:
            self._walk(self._fd, "", 1)
        except OSError as exc:
            self.close()
            raise SubmissionError(_unreadable(root.name, exc)) from None

    def _walk(self, fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            path = f"{prefix}{entry.name}"
            info = entry.stat(follow_symlinks=False)
            problem = _file_problem(info)
            if stat.S_ISDIR(info.st_mode):
                if depth < _MAX_DEPTH:
                    child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    try:
                        self._walk(child, f"{path}/", depth + 1)
                    finally:
                        os.close(child)
            elif problem is not None:
                self.refused[path] = problem
            else:
                self._names.add(path)

    def names(self) -> set[str]:
        return self._names

    def read(self, name: str, refused: dict[str, str]) -> bytes | None:
        try:
            return self._read(name)
        except _Refused as refusal:
            refused[refusal.path] = refusal.reason
            return None
        except OSError as exc:
            raise SubmissionError(_unreadable(f"{self.root.name}/{name}", exc)) from None

    def _read(self, name: str) -> bytes:
        """Open each component relative to its parent with ``O_NOFOLLOW``; a link swapped in
        since the listing fails with ``ELOOP`` (or ``ENOTDIR``) and is refused, not followed."""
        parts = name.split("/")
        fd = os.dup(self._fd)
        try:
            for depth, part in enumerate(parts):
                last = depth == len(parts) - 1
                try:
                    next_fd = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise _Refused("/".join(parts[: depth + 1]), SYMLINK) from None
                    raise
                os.close(fd)
                fd = next_fd
            problem = _file_problem(os.fstat(fd))
            if problem is not None:
                raise _Refused(name, problem)
            data = _read_at_most(fd, MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise _Refused(name, _too_large())
            return data
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Refused(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason


def _file_problem(info: os.stat_result) -> str | None:
    """Why a (non-folder) entry must not be read, from its ``lstat``; ``None`` when it may."""
    if stat.S_ISLNK(info.st_mode):
        return SYMLINK
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return NOT_REGULAR
    if info.st_nlink > 1:
        return _hard_link(info.st_nlink)
    if info.st_size > MAX_FILE_BYTES:
        return _too_large(info.st_size)
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _unreadable(what: str, exc: OSError) -> str:
    return f"{what}: unreadable ({exc.strerror or exc})"


class _ZipEntries(Entries):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._budget = MAX_TOTAL_BYTES
        try:
            # The zip itself is opened without following a link, and only when it is a file.
            self._handle = os.fdopen(os.open(path, _FILE_FLAGS), "rb")
        except OSError as exc:
            raise SubmissionError(_unreadable(path.name, exc)) from None
        try:
            self._zip = zipfile.ZipFile(self._handle)
            infos = self._zip.infolist()
        except zipfile.BadZipFile as exc:
            self._handle.close()
            raise SubmissionError(f"{path.name}: not a valid zip file ({exc})") from None
        except OSError as exc:
            self._handle.close()
            raise SubmissionError(_unreadable(path.name, exc)) from None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.is_dir():
                continue
            safe = self._safe_name(info)
            if safe is not None:
                self._infos[safe] = info

    def _safe_name(self, info: zipfile.ZipInfo) -> str | None:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
            self.notes.append(f"{self.path.name}: skipped unsafe path {info.filename!r}")
            self.refused[info.filename] = UNSAFE_PATH
            return None
        if not parts:
            return None
        safe = str(PurePosixPath(*parts))
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            self.notes.append(f"{self.path.name}: skipped symlink {info.filename!r}")
            self.refused[safe] = SYMLINK
            return None
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
            self.refused[safe] = NOT_REGULAR
            return None
        return safe

    def names(self) -> set[str]:
        return set(self._infos)

    def read(self, name: str, refused: dict[str, str]) -> bytes | None:
        info = self._infos[name]
        limit = min(MAX_FILE_BYTES, self._budget)
        if info.file_size > limit:
            self._over_limit(name, refused)
            return None
        try:
            with self._zip.open(info) as handle:
                # The header's size can lie: read one byte past the limit to catch a bomb.
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError) as exc:
            raise SubmissionError(f"{self.path.name}: {name}: unreadable entry ({exc})") from None
        if len(data) > limit:
            self._over_limit(name, refused)
            return None
        self._budget -= len(data)
        return data

    def _over_limit(self, name: str, refused: dict[str, str]) -> None:
        self.notes.append(f"{self.path.name}: skipped {name} (uncompressed size over the limit)")
        refused[name] = (
            f"too large uncompressed (the caps: {MAX_FILE_BYTES} bytes per file, "
            f"{MAX_TOTAL_BYTES} per zip)"
        )

    def close(self) -> None:
        self._zip.close()
        self._handle.close()
