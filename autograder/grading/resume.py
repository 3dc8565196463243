"""Resume: which submissions of a batch are already graded, by the content of what was graded.

A submission's *content key* is the sha256 of its student files (and what the extensions read,
such as the notebook) together with the course's side: the hidden suites, the given files, the
worker's own code (it serves the suites' probes), the part points and the parts asked for.
``out/<name>/grading.json``, written last, records the key: a re-run with the same key reuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from autograder.config import PACKAGE, Assignment
from autograder.grading.sandbox.base import RUNTIME_FILES
from autograder.grading.scoring import part_points
from autograder.grading.unpack import StudentFiles

GRADING = "grading.json"


def content_digest(files: StudentFiles, extra: list[bytes]) -> str:
    """Digest of what the submission contributes: its student files and the extensions' reads."""
    digest = hashlib.sha256()
    for path in sorted(files.files):
        digest.update(f"\0{path}\0".encode())
        digest.update(files.files[path])
    digest.update(json.dumps([sorted(files.missing), sorted(files.refused.items())]).encode())
    for data in extra:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def read_grading(dest: Path) -> dict[str, Any] | None:
    path = dest / GRADING
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: grade again
    return data if isinstance(data, dict) else None


def course_digest(assignment: Assignment, parts: list[str] | None) -> str:
    """Hash of what the course contributes to a grade: suites, given files, points, parts."""
    digest = hashlib.sha256()
    digest.update(json.dumps([part_points(assignment), sorted(parts or [])]).encode())
    # All of the release's flows/: the given files, and the stubs that stand in for missing files.
    given = sorted((assignment.release_dir / PACKAGE).glob("*.py"))
    suites = sorted(
        p
        for p in assignment.hidden_tests_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    runtime = [Path(__file__).parent / name for name in RUNTIME_FILES]
    for path in [*given, *suites]:
        digest.update(f"\0{path.relative_to(assignment.root)}\0".encode())
        digest.update(path.read_bytes())
    for path in runtime:
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
