"""Generate ``assignments/<name>/`` (the student release) from ``solutions/<name>/``.

The solution folder is the single source of truth. The release is a pure function of it and of
``course.yml``: student files become stubs (:func:`autograder.markers.stub_text`), the notebook
goes through nbgrader, ``tests/points.json`` carries the points per part, every other file is
copied as is. ``build --check`` renders the release in a temporary folder and compares bytes.

``course.yml`` selects the parts. The files of a part it leaves out (``flows/<part>.py``, files
``flows/<part>.<ext>`` beside it, ``tests/test_<part>.py``) are not in the release, and neither
are its sections of a Markdown file, written between ``<!-- part: <part> -->`` and
``<!-- end part: <part> -->`` (the marker lines themselves never ship).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from autograder.config import COURSE_FILE, PACKAGE, Assignment
from autograder.errors import AutograderError
from autograder.markers import find_regions, marker_lines, read_source, stub_text

# Caches a run of the public tests or a notebook session leaves behind: never part of a release.
JUNK_DIRS = frozenset({"__pycache__", ".pytest_cache", ".ipynb_checkpoints"})
JUNK_SUFFIXES = (".pyc",)
POINTS_FILE = "tests/points.json"
# A Markdown section that belongs to one part: `<!-- part: iaf -->` ... `<!-- end part: iaf -->`.
_PART_MARK = re.compile(r"^\s*<!--\s*(end\s+)?part:\s*(\w+)\s*-->\s*$")

StudentFile = Callable[[Path], str]
NotebookWriter = Callable[[Assignment, Path], Path]


def student_files(assignment: Assignment) -> dict[str, Path]:
    """``flows/<part>.py`` -> its path in the solution, for every part in ``course.yml``.

    Each must exist and hold at least one solution region, or students would get the answer.
    """
    files: dict[str, Path] = {}
    for part in assignment.parts:
        relative = f"flows/{part}.py"
        path = assignment.solution_dir / relative
        if not path.is_file():
            raise AutograderError(
                f"{COURSE_FILE}: assignments.{assignment.name}.parts.{part}: no student file {path}"
            )
        if not find_regions(path, read_source(path)):
            raise AutograderError(f"{path}: student file without a '### BEGIN SOLUTION' region")
        needed = sorted(_imported_parts(path) & set(assignment.unselected_parts))
        if needed:
            raise AutograderError(
                f"{COURSE_FILE}: assignments.{assignment.name}.parts.{part}: needs part "
                f"{needed[0]!r} ({relative} imports {PACKAGE}.{needed[0]}), which is not selected"
            )
        files[relative] = path
    return files


def part_of(relative: str) -> str | None:
    """The part a file of the solution folder belongs to, if any: ``flows/iaf.py`` and
    ``flows/digits.csv.gz`` -> ``iaf``, ``digits``; ``tests/test_iaf.py`` -> ``iaf``."""
    folder, _, name = relative.rpartition("/")
    if folder == PACKAGE:
        return name.split(".", 1)[0]
    if folder == "tests" and name.startswith("test_") and name.endswith(".py"):
        return name.removeprefix("test_").removesuffix(".py")
    return None


def left_out(assignment: Assignment) -> Callable[[str], bool]:
    """Whether a file of the solution folder belongs to a part ``course.yml`` does not select."""
    unselected = set(assignment.unselected_parts)
    return lambda relative: part_of(relative) in unselected


def select_sections(assignment: Assignment, text: str, where: str) -> str:
    """``text`` without the sections of unselected parts and without any part marker line."""
    unselected, known = set(assignment.unselected_parts), set(assignment.parts)
    kept: list[str] = []
    inside: str | None = None
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        match = _PART_MARK.match(line)
        if match is None:
            if inside is None or inside not in unselected:
                kept.append(line)
            continue
        closing, part = bool(match.group(1)), match.group(2)
        if part not in known | unselected:
            raise AutograderError(f"{where}:{number}: section of unknown part {part!r}")
        if closing != (inside is not None) or (closing and part != inside):
            raise AutograderError(f"{where}:{number}: {line.strip()!r} does not match its section")
        inside = None if closing else part
    if inside is not None:
        raise AutograderError(f"{where}: the section of part {inside!r} is not closed")
    return "".join(kept)


def _imported_parts(path: Path) -> set[str]:
    """The modules ``flows.<name>`` that a student file imports (``from flows.<name> import``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(read_source(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith(f"{PACKAGE}.")}
    return found


def render(
    assignment: Assignment, dest: Path, student_file: StudentFile, notebook: NotebookWriter
) -> None:
    """Write one bundle of the assignment into the empty folder ``dest``.

    ``student_file`` turns a solution module into the text shipped (stub or solution) and
    ``notebook`` writes the notebook's version (nbgrader release or solution); every other file
    of the solution folder is copied byte for byte.
    """
    source = assignment.solution_dir
    if not source.is_dir():
        raise AutograderError(f"{source}: no solution folder for assignment {assignment.name!r}")
    students = student_files(assignment)
    notebook_file = assignment.notebook.file if assignment.notebook else None
    unselected = left_out(assignment)
    for relative, path in walk_files(source).items():
        if unselected(relative):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative in students:
            target.write_bytes(student_file(path).encode("utf-8"))
        elif relative == notebook_file:
            notebook(assignment, dest)
        elif relative.endswith(".md"):
            text = select_sections(assignment, read_source(path), str(path))
            _check_given(path, relative)
            target.write_bytes(text.encode("utf-8"))
        else:
            _check_given(path, relative)
            shutil.copyfile(path, target)
    (dest / POINTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (dest / POINTS_FILE).write_text(points_json(assignment), encoding="utf-8")


def render_release(assignment: Assignment, dest: Path) -> None:
    """Write the student release (stubs, nbgrader's student notebook) into ``dest``."""
    render(assignment, dest, stub_text, _release_notebook)


def points_json(assignment: Assignment) -> str:
    """``{"part": points}`` for the public summary, sorted, integers where the points are."""
    points = {part: int(p) if float(p).is_integer() else p for part, p in assignment.parts.items()}
    return json.dumps(points, indent=2, sort_keys=True) + "\n"


def build_assignment(assignment: Assignment, check: bool) -> list[str]:
    """Regenerate the release; return the relative paths that differ from the one on disk.

    With ``check`` nothing is written. Otherwise only files that changed are replaced (each by
    an atomic rename) and files the build no longer produces are removed.
    """
    with tempfile.TemporaryDirectory(prefix=f"autograder-build-{assignment.name}-") as tmp:
        fresh = Path(tmp)
        render_release(assignment, fresh)
        new = {rel: path.read_bytes() for rel, path in walk_files(fresh).items()}
    release = assignment.release_dir
    old = walk_files(release) if release.is_dir() else {}
    added = [rel for rel in new if rel not in old]
    removed = [rel for rel in old if rel not in new]
    changed = [rel for rel in new if rel in old and old[rel].read_bytes() != new[rel]]
    drift = sorted(added + removed + changed)
    if not check:
        _apply(release, {rel: new[rel] for rel in added + changed}, removed)
    return drift


def walk_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> path of every file under ``root``, skipping caches, sorted."""
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in JUNK_DIRS)
        for name in sorted(names):
            if not name.endswith(JUNK_SUFFIXES):
                path = Path(folder) / name
                files[path.relative_to(root).as_posix()] = path
    return files


def _check_given(path: Path, relative: str) -> None:
    """A file copied verbatim must not carry markers: its solution would ship as it is."""
    found = marker_lines(path.read_bytes().decode("utf-8", errors="replace"))
    if found:
        line, text = found[0]
        raise AutograderError(
            f"{path}:{line}: {text!r} in a file copied as is ({relative} is not a student file "
            "of course.yml)"
        )


def _release_notebook(assignment: Assignment, dest: Path) -> Path:
    # nbgrader is heavy; import it only when the assignment has a notebook to release.
    from autograder.notebook import release_notebook

    return release_notebook(assignment, dest)


def _apply(release: Path, writes: dict[str, bytes], removals: list[str]) -> None:
    """Bring ``release`` to the new contents file by file: write beside, then rename over."""
    for relative, data in writes.items():
        target = release / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, target)
    for relative in removals:
        (release / relative).unlink()
    # Folders emptied by the removals go too (caches aside, they hold nothing the build made).
    for folder in sorted({(release / r).parent for r in removals}, key=lambda p: -len(p.parts)):
        while folder != release and folder.is_dir() and not _has_files(folder):
            shutil.rmtree(folder)
            folder = folder.parent


def _has_files(folder: Path) -> bool:
    return bool(walk_files(folder))
