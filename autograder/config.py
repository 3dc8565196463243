"""Read and check ``course.yml``: the single place the course's numbers live.

Every problem is an :class:`AutograderError` whose one-line message names the file and the key,
e.g. ``course.yml: assignments.normalizing_flows.parts.coupling: expected a number >= 0, got 'x'``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autograder.errors import AutograderError

COURSE_FILE = "course.yml"
# The student package every assignment ships (CONTRACT.md): ``<assignment>/flows/<part>.py``.
PACKAGE = "flows"
VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")
SOLUTION_MARKER = "### BEGIN SOLUTION"  # autograder.markers.BEGIN: what makes a student file


@dataclass(frozen=True)
class Limits:
    """Resource limits for the process that runs one submission's code."""

    test_timeout_s: float = 120.0
    submission_timeout_s: float = 900.0
    memory_mb: int = 6144
    max_processes: int = 64
    disk_mb: int = 512  # the worker's writable space (scratch, /tmp, /dev/shm), each


@dataclass(frozen=True)
class NotebookConfig:
    """The nbgrader notebook of an assignment (``file`` relative to its solution folder)."""

    file: str
    points: float


@dataclass(frozen=True)
class Assignment:
    """One assignment of ``course.yml`` and where its files live in the repository."""

    name: str
    title: str
    due: dt.datetime
    parts: dict[str, float]
    limits: Limits
    hidden_tests_visibility: str
    notebook: NotebookConfig | None
    root: Path = field(repr=False)

    @property
    def solution_dir(self) -> Path:
        """``solutions/<name>``: the reference, authored by TAs, with solution markers."""
        return self.root / "solutions" / self.name

    @property
    def release_dir(self) -> Path:
        """``assignments/<name>``: the student release generated from the solution."""
        return self.root / "assignments" / self.name

    @property
    def hidden_tests_dir(self) -> Path:
        """``tests/hidden/<name>``: the hidden suites, never released to students."""
        return self.root / "tests" / "hidden" / self.name

    @property
    def examples_dir(self) -> Path:
        """``tests/examples/<name>``: specs of the example, mutant and hostile submissions."""
        return self.root / "tests" / "examples" / self.name

    @property
    def unselected_parts(self) -> list[str]:
        """Parts the reference offers that ``parts`` does not select, sorted.

        The reference offers a part ``p`` when it has the student file ``flows/<p>.py`` (with a
        solution region) and its public self-checks ``tests/test_<p>.py``; a given file with a
        stray marker is no part (the build refuses it). An unselected part is not released, not
        graded, not in the points, and its hidden suite is not collected. Without the solution
        folder (a Gradescope container): [].
        """
        package = self.solution_dir / PACKAGE
        if not package.is_dir():
            return []
        return sorted(
            path.stem
            for path in package.glob("*.py")
            if path.stem not in self.parts
            and (self.solution_dir / "tests" / f"test_{path.stem}.py").is_file()
            and SOLUTION_MARKER in path.read_text(encoding="utf-8")
        )

    @property
    def total_points(self) -> float:
        """Points of the module parts plus the notebook's."""
        notebook = self.notebook.points if self.notebook else 0.0
        return float(sum(self.parts.values())) + notebook


@dataclass(frozen=True)
class Course:
    """The whole of ``course.yml``."""

    id: str
    title: str
    roster: Path | None
    assignments: dict[str, Assignment]
    root: Path

    def assignment(self, name: str) -> Assignment:
        """The assignment called ``name``, or a one-line error listing the known ones."""
        try:
            return self.assignments[name]
        except KeyError:
            known = ", ".join(sorted(self.assignments)) or "none"
            raise AutograderError(
                f"{COURSE_FILE}: no assignment {name!r} (known: {known})"
            ) from None


class _Reader:
    """Typed access to nested YAML mappings with errors that name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> AutograderError:
        return AutograderError(f"{self.path.name}: {key}: {problem}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_describe(value)}")
        return value

    def required(self, mapping: dict[str, Any], name: str, key: str) -> Any:
        if name not in mapping or mapping[name] is None:
            raise self.fail(f"{key}.{name}" if key else name, "missing")
        return mapping[name]

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {_describe(value)}")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise self.fail(key, f"expected a number {bound}, got {_describe(value)}")
        return float(value)

    def datetime(self, value: Any, key: str) -> dt.datetime:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, dt.date):
            parsed = dt.datetime.combine(value, dt.time(23, 59))
        elif isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                raise self.fail(
                    key, f"expected an ISO date like 2026-12-18T23:59:00+00:00, got {value!r}"
                ) from None
        else:
            raise self.fail(key, f"expected a date, got {_describe(value)}")
        # A due date without a zone is read as UTC, so comparisons never depend on the host.
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)

    def unknown_keys(self, mapping: dict[str, Any], allowed: set[str], key: str) -> None:
        extra = sorted(set(mapping) - allowed)
        if extra:
            where = f"{key}.{extra[0]}" if key else extra[0]
            raise self.fail(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _read_limits(reader: _Reader, raw: Any, key: str) -> Limits:
    if raw is None:
        return Limits()
    raw = reader.mapping(raw, key)
    reader.unknown_keys(raw, set(Limits.__dataclass_fields__), key)
    defaults = Limits()
    values: dict[str, Any] = {}
    for name in Limits.__dataclass_fields__:
        if name in raw:
            number = reader.number(raw[name], f"{key}.{name}", positive=True)
            values[name] = int(number) if isinstance(getattr(defaults, name), int) else number
    limits = Limits(**values)
    if limits.test_timeout_s > limits.submission_timeout_s:
        raise reader.fail(
            f"{key}.test_timeout_s",
            f"{limits.test_timeout_s:g} s is longer than submission_timeout_s "
            f"({limits.submission_timeout_s:g} s)",
        )
    return limits


def _read_assignment(reader: _Reader, name: str, raw: Any, root: Path) -> Assignment:
    key = f"assignments.{name}"
    raw = reader.mapping(raw, key)
    allowed = {"title", "due", "parts", "notebook", "limits", "hidden_tests_visibility"}
    reader.unknown_keys(raw, allowed, key)
    title = reader.string(reader.required(raw, "title", key), f"{key}.title")
    due = reader.datetime(reader.required(raw, "due", key), f"{key}.due")
    parts_raw = reader.mapping(reader.required(raw, "parts", key), f"{key}.parts")
    if not parts_raw:
        raise reader.fail(f"{key}.parts", "expected at least one part")
    parts = {
        str(part): reader.number(points, f"{key}.parts.{part}")
        for part, points in parts_raw.items()
    }
    notebook = None
    if raw.get("notebook") is not None:
        nb = reader.mapping(raw["notebook"], f"{key}.notebook")
        reader.unknown_keys(nb, {"file", "points"}, f"{key}.notebook")
        notebook = NotebookConfig(
            file=reader.string(
                reader.required(nb, "file", f"{key}.notebook"), f"{key}.notebook.file"
            ),
            points=reader.number(
                reader.required(nb, "points", f"{key}.notebook"), f"{key}.notebook.points"
            ),
        )
    visibility = raw.get("hidden_tests_visibility", "after_published")
    if visibility not in VISIBILITIES:
        raise reader.fail(
            f"{key}.hidden_tests_visibility",
            f"expected one of {', '.join(VISIBILITIES)}, got {visibility!r}",
        )
    return Assignment(
        name=name,
        title=title,
        due=due,
        parts=parts,
        limits=_read_limits(reader, raw.get("limits"), f"{key}.limits"),
        hidden_tests_visibility=visibility,
        notebook=notebook,
        root=root,
    )


def load_course(root: Path | str | None = None) -> Course:
    """Load ``course.yml`` from ``root`` (default: the current directory).

    Raises :class:`AutograderError` with a one-line message for a missing file, invalid YAML,
    a missing or unknown key, or a value of the wrong type.
    """
    root = Path.cwd() if root is None else Path(root)
    path = root / COURSE_FILE
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AutograderError(
            f"{path}: not found (run autograder from the course repository's root)"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AutograderError(f"{path.name}:{where} invalid YAML: {problem}") from None
    raw = reader.mapping(raw, "(top level)")
    reader.unknown_keys(raw, {"course", "assignments"}, "")
    course = reader.mapping(reader.required(raw, "course", ""), "course")
    reader.unknown_keys(course, {"id", "title", "roster"}, "course")
    roster = course.get("roster")
    assignments_raw = reader.mapping(reader.required(raw, "assignments", ""), "assignments")
    assignments = {
        str(name): _read_assignment(reader, str(name), value, root)
        for name, value in assignments_raw.items()
    }
    return Course(
        id=reader.string(reader.required(course, "id", "course"), "course.id"),
        title=reader.string(reader.required(course, "title", "course"), "course.title"),
        roster=root / reader.string(roster, "course.roster") if roster is not None else None,
        assignments=assignments,
        root=root,
    )
