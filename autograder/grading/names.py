"""Output names: what ``out/<name>/`` and the nbgrader student id of each submission are called.

A submission's *raw* name is its folder name or zip stem, which a student chose. It becomes a
folder in ``--out`` and a student id in nbgrader's course folder, so it is made safe first:

- only ``A-Z a-z 0-9 . _ -`` are kept (anything else becomes ``_``), and a leading ``.`` or
  ``-`` becomes ``_``: never ``.``, ``..``, a path, a hidden file or a command-line option;
- at most :data:`MAX_STEM` characters are kept (a 240-character folder name would make file
  names built from it too long);
- never one of the batch's own files and folders in ``--out`` (:func:`reserved_names`:
  ``grades.csv``, ``nbgrader/``, the SQLite gradebook and its journals), compared ignoring case.

A name that had to change gets ``-`` and 10 hex digits of the SHA-256 of the raw name, so two
raw names that clean up alike stay apart, and the same raw name gets the same output name on
every run (a batch resumes). ``grades.csv`` carries the raw submission path beside the name.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from autograder.errors import AutograderError
from autograder.grading.reports import GRADES_CSV
from autograder.nbgrader_course import FOLDER as NBGRADER_FOLDER
from autograder.nbgrader_db import sqlite_path

MAX_STEM = 64  # characters of the raw name kept (the hash suffix comes on top)
HASH_CHARS = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SQLITE_SIDE_FILES = ("", "-journal", "-wal", "-shm")


def raw_name(submission: Path) -> str:
    """``<name>`` as the student chose it: the folder name, or the stem of a ``.zip``."""
    return submission.stem if submission.suffix.lower() == ".zip" else submission.name


def reserved_names(db_url: str | None = None) -> frozenset[str]:
    """What a batch itself writes into ``--out`` (lower case): no submission may be called so."""
    names = {GRADES_CSV, NBGRADER_FOLDER, "gradebook.db"}
    path = sqlite_path(db_url) if db_url else None
    if path is not None:
        names.update(path.name + side for side in _SQLITE_SIDE_FILES)
    return frozenset(name.lower() for name in names)


def safe_name(raw: str, reserved: frozenset[str] = frozenset(), salt: str = "") -> str:
    """``raw`` itself when it is already safe, else its cleaned prefix plus a hash suffix."""
    clean = _UNSAFE.sub("_", raw)
    clean = re.sub(r"^[.-]", "_", clean) or "submission"
    if not salt and clean == raw and len(raw) <= MAX_STEM and raw.lower() not in reserved:
        return raw
    data = (raw + salt).encode("utf-8", errors="surrogateescape")
    return f"{clean[:MAX_STEM]}-{hashlib.sha256(data).hexdigest()[:HASH_CHARS]}"


def output_names(
    submissions: Iterable[Path], reserved: frozenset[str] = frozenset()
) -> dict[str, Path]:
    """``{output name: submission}``, in the order given, every name safe and distinct.

    A path that does not exist, or two submissions with the same raw name, are the operator's error:
    :class:`AutograderError`, before anything is graded.
    """
    names: dict[str, Path] = {}
    raws: dict[str, Path] = {}
    for path in map(Path, submissions):
        if not os.path.lexists(path):  # a mistyped path: said before anything is graded
            raise AutograderError(f"{path}: no such submission (not a file or folder)")
        raw = raw_name(path)
        if raw in raws:
            raise AutograderError(
                f"{path}: two submissions are named {raw!r} (the other is {raws[raw]}); "
                "their outputs would overwrite each other"
            )
        raws[raw] = path
        name, attempt = safe_name(raw, reserved), 0
        taken = {n.lower() for n in names}
        while name.lower() in taken:  # a raw name that looks like another's cleaned name
            attempt += 1
            name = safe_name(raw, reserved, salt=f"\0{attempt}")
        names[name] = path
    return names
