"""Take the student files out of a submission: a folder or a ``.zip``.

Where the files are looked for, in order (the first that holds any student file wins):

1. ``flows/`` at the top of the folder or zip (``submission/flows/coupling.py``);
2. ``flows/`` one folder down, as students zip their copy (``alice/flows/coupling.py``);
3. the student files directly at the top (``coupling.py``), for a student who zipped the files
   rather than the folder.

Only the course's student files are taken; everything else in the submission is ignored (the
course's own given files are used at grading). Zips are read defensively: entries with absolute
paths, ``..`` components or symlink modes are skipped with a note, every entry is capped in size
and the total uncompressed size is capped too (zip bombs), and nothing is ever extracted to disk.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autograder.config import PACKAGE
from autograder.errors import AutograderError

MAX_FILE_BYTES = 2 * 1024 * 1024  # a student file larger than this is not source code
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # uncompressed bytes read from one zip, all entries together


class SubmissionError(AutograderError):
    """A submission that cannot be read at all (broken zip, empty, unreadable)."""


@dataclass
class StudentFiles:
    """The student files found in one submission, keyed by file name (``"coupling.py"``)."""

    files: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped or guessed, for staff


def collect_submission(submission: Path, student_files: list[str]) -> StudentFiles:
    """Read the student files of ``submission`` (a folder or a ``.zip``).

    ``student_files`` are file names such as ``["coupling.py", "maf.py"]``. A file that is not
    found lands in ``missing``; a submission that holds none of them is still returned (every
    part then gets the release's stub), but one that cannot be read raises
    :class:`SubmissionError` with a one-line message naming it.
    """
    submission = Path(submission)
    if submission.is_dir():
        entries = _folder_entries(submission)
    elif submission.is_file():
        entries = _ZipEntries(submission)
    else:
        raise SubmissionError(f"{submission.name}: no such file or folder")
    if not entries.names():
        raise SubmissionError(f"{submission.name}: the submission is empty")
    return _collect(submission, entries, student_files)


def _collect(submission: Path, entries: _Entries, wanted: list[str]) -> StudentFiles:
    result = StudentFiles(notes=list(entries.notes))
    prefix = _locate(entries.names(), wanted)
    if prefix is None:
        result.missing = list(wanted)
        result.notes.append(f"{submission.name}: no {PACKAGE}/ folder with student files found")
        return result
    if prefix != PACKAGE:
        result.notes.append(f"{submission.name}: student files taken from {prefix or '(top)'}/")
    for name in wanted:
        path = f"{prefix}/{name}" if prefix else name
        data = entries.read(path, result.notes) if path in entries.names() else None
        if data is None:
            result.missing.append(name)
        else:
            result.files[name] = data
    return result


def _locate(names: set[str], wanted: list[str]) -> str | None:
    """The folder (``"flows"``, ``"alice/flows"`` or ``""``) that holds the student files."""

    def holds(prefix: str) -> bool:
        return any((f"{prefix}/{name}" if prefix else name) in names for name in wanted)

    if holds(PACKAGE):
        return PACKAGE
    nested = sorted(
        {str(PurePosixPath(n).parents[1]) for n in names if len(PurePosixPath(n).parts) == 3}
    )
    for top in nested:
        if PurePosixPath(top).name != "__MACOSX" and holds(f"{top}/{PACKAGE}"):
            return f"{top}/{PACKAGE}"
    return "" if holds("") else None


class _Entries:
    """File names (POSIX, relative) of a submission and a bounded reader for them."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def names(self) -> set[str]:
        raise NotImplementedError

    def read(self, name: str, notes: list[str]) -> bytes | None:
        raise NotImplementedError


class _FolderEntries(_Entries):
    def __init__(self, root: Path, names: set[str]) -> None:
        super().__init__()
        self.root = root
        self._names = names

    def names(self) -> set[str]:
        return self._names

    def read(self, name: str, notes: list[str]) -> bytes | None:
        path = self.root / name
        # A symlink could point at anything on the grading host (another student's work).
        if path.is_symlink() or not path.is_file():
            notes.append(f"{self.root.name}/{name}: skipped (not a regular file)")
            return None
        if path.stat().st_size > MAX_FILE_BYTES:
            notes.append(f"{self.root.name}/{name}: skipped (larger than {MAX_FILE_BYTES} bytes)")
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SubmissionError(f"{self.root.name}/{name}: unreadable ({exc.strerror})") from None


def _folder_entries(root: Path) -> _FolderEntries:
    """Names up to three levels deep: enough for ``top/flows/x.py``, cheap on big folders."""
    names: set[str] = set()
    try:
        for depth in ("*", "*/*", "*/*/*"):
            names.update(p.relative_to(root).as_posix() for p in root.glob(depth) if p.is_file())
    except OSError as exc:
        raise SubmissionError(f"{root.name}: unreadable ({exc.strerror})") from None
    return _FolderEntries(root, names)


class _ZipEntries(_Entries):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._budget = MAX_TOTAL_BYTES
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except zipfile.BadZipFile as exc:
            raise SubmissionError(f"{path.name}: not a valid zip file ({exc})") from None
        except OSError as exc:
            raise SubmissionError(f"{path.name}: unreadable ({exc.strerror or exc})") from None
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
            return None
        if stat.S_ISLNK(info.external_attr >> 16):
            self.notes.append(f"{self.path.name}: skipped symlink {info.filename!r}")
            return None
        return str(PurePosixPath(*parts)) if parts else None

    def names(self) -> set[str]:
        return set(self._infos)

    def read(self, name: str, notes: list[str]) -> bytes | None:
        info = self._infos[name]
        limit = min(MAX_FILE_BYTES, self._budget)
        if info.file_size > limit:
            notes.append(f"{self.path.name}: skipped {name} (uncompressed size over the limit)")
            return None
        try:
            with self._zip.open(info) as handle:
                # The header's size can lie: read one byte past the limit to catch a bomb.
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError) as exc:
            raise SubmissionError(f"{self.path.name}: {name}: unreadable entry ({exc})") from None
        if len(data) > limit:
            notes.append(f"{self.path.name}: skipped {name} (uncompressed size over the limit)")
            return None
        self._budget -= len(data)
        return data
