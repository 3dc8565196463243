"""Take the student files out of a submission: a folder or a ``.zip``.

Where the files are looked for, in order (the first that holds any student file wins):

1. ``flows/`` at the top of the folder or zip (``submission/flows/coupling.py``);
2. ``flows/`` one folder down, as students zip their copy (``alice/flows/coupling.py``);
3. the student files directly at the top (``coupling.py``), for a student who zipped the files
   rather than the folder.

Only the course's student files are taken; everything else in the submission is ignored (the
course's own given files are used at grading). Nothing is ever extracted to disk.

**Refusals.** :mod:`autograder.grading.submission_reader` reads without following links or
reading too much (links, hard links, devices, oversize files and zip bombs are refused). A
refusal that concerns a student file (or a folder on its way) is kept in
:attr:`StudentFiles.refused` with its reason: the batch turns it into a flag and a line of
feedback, never into "not in your submission".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autograder.config import PACKAGE
from autograder.grading.submission_reader import (
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    SYMLINK,
    Entries,
    SubmissionError,
    open_entries,
)

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "ExtraFile",
    "StudentFiles",
    "SubmissionError",
    "collect_submission",
    "find_extra_file",
]


@dataclass
class StudentFiles:
    """The student files found in one submission, keyed by file name (``"coupling.py"``)."""

    files: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped or guessed, for staff
    # What was refused and why, keyed by its path in the submission ("flows/coupling.py").
    refused: dict[str, str] = field(default_factory=dict)

    def flags(self) -> list[str]:
        """One flag per refusal, for ``results.json``'s ``extra_data.flags``."""
        return [f"refused {path}: {reason}" for path, reason in self.refused.items()]

    def feedback_notes(self) -> list[str]:
        """What the student reads about files that were not graded: refused (and why) or
        missing, each time with the consequence (the release's stub was graded instead)."""
        notes = [
            f"{path} in your submission was refused: it is {reason}. "
            "Submit the file itself (no links, a plain source file)."
            for path, reason in self.refused.items()
        ]
        for name in self.missing:
            blocked = [path for path in self.refused if _explains(path, name)]
            if blocked:
                notes.append(
                    f"{PACKAGE}/{name} was not read (refused: {blocked[0]}): "
                    "the stub was graded instead"
                )
            else:
                notes.append(
                    f"{PACKAGE}/{name} is not in your submission: the stub was graded instead"
                )
        return notes


def collect_submission(submission: Path, student_files: list[str]) -> StudentFiles:
    """Read the student files of ``submission`` (a folder or a ``.zip``).

    ``student_files`` are file names such as ``["coupling.py", "maf.py"]``. A file that is not
    found lands in ``missing`` (and in ``refused`` too when a link or size cap kept it out); a
    submission that holds none of them is still returned (every part then gets the release's
    stub), but one that cannot be read raises :class:`SubmissionError` with a one-line message
    naming it.
    """
    with open_entries(Path(submission)) as entries:
        return _collect(Path(submission), entries, student_files)


@dataclass(frozen=True)
class ExtraFile:
    """A file looked up beside the student package (e.g. the notebook)."""

    path: str | None  # where it is in the submission; None when absent
    data: bytes | None  # None when absent or refused
    refusal: str | None = None  # why it was refused ("a symbolic link")


def find_extra_file(submission: Path, name: str) -> ExtraFile:
    """``name`` at the top of ``submission``, or one folder down (preferring the folder that
    holds ``flows/``), read with the same refusals as the student files."""
    with open_entries(Path(submission)) as entries:
        candidates = entries.names() | set(entries.refused)
        path = _beside_package(candidates, name)
        if path is None:
            return ExtraFile(None, None)
        if path in entries.refused:
            return ExtraFile(path, None, entries.refused[path])
        refused: dict[str, str] = {}
        data = entries.read(path, refused)
        return ExtraFile(path, data, refused.get(path))


def _collect(submission: Path, entries: Entries, wanted: list[str]) -> StudentFiles:
    result = StudentFiles()
    notes: list[str] = []
    prefix = _locate(entries.names() | set(entries.refused), wanted)
    result.refused = {p: r for p, r in entries.refused.items() if _concerns(p, r, wanted)}
    if prefix is None:
        result.missing = list(wanted)
        notes.append(f"{submission.name}: no {PACKAGE}/ folder with student files found")
    else:
        if prefix != PACKAGE:
            notes.append(f"{submission.name}: student files taken from {prefix or '(top)'}/")
        for name in wanted:
            path = f"{prefix}/{name}" if prefix else name
            data = entries.read(path, result.refused) if path in entries.names() else None
            if data is None:
                result.missing.append(name)
            else:
                result.files[name] = data
    result.notes = [*entries.notes, *notes]  # the reader's notes (skipped entries) come first
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


def _beside_package(names: set[str], name: str) -> str | None:
    """``name`` at the top wins; else the one beside a ``flows/`` one folder down."""
    if name in names:
        return name
    nested = sorted(n for n in names if n.count("/") == 1 and n.endswith(f"/{name}"))
    beside = [
        n
        for n in nested
        if any(m.startswith(f"{n.split('/')[0]}/{PACKAGE}") for m in names if m != n)
    ]
    return (beside or nested or [None])[0]


def _concerns(path: str, reason: str, wanted: list[str]) -> bool:
    """Whether a refusal is worth telling the student: it is (or is on the way to) a place
    where a student file is looked for, or a linked folder at the top (which may hide
    ``flows/``)."""
    parts = PurePosixPath(path).parts
    if len(parts) == 1 and reason == SYMLINK and "." not in parts[0]:
        return True  # a linked folder at the top (a file name has a dot)
    return bool(parts) and parts[-1] in {*wanted, PACKAGE}


def _explains(refused: str, name: str) -> bool:
    """Whether refusing ``refused`` is why student file ``name`` was not read."""
    parts = PurePosixPath(refused).parts
    if len(parts) == 1:
        # The file itself at the top, flows/ itself, or a linked folder (no dot in its name).
        return parts[0] in (name, PACKAGE) or "." not in parts[0]
    if len(parts) == 2:
        return parts[1] == name if parts[0] == PACKAGE else parts[1] == PACKAGE
    return parts[1:] == (PACKAGE, name)
