"""The ``reports`` stage: what a graded submission leaves behind.

- ``results.json`` in Gradescope's autograder format (one entry per test that ran, tagged with
  its part; hidden tests shown as ``hidden_tests_visibility`` in ``course.yml`` says);
- ``feedback.md`` for the student, and ``feedback.html`` (the same, rendered, pictures inline):
  per part the points, what passed, and for what failed its message and where to look. Only the
  messages the tests wrote for students appear, never a line of test code;
- ``grades.csv`` for the instructor: one row per submission.

Every file is written atomically (:mod:`autograder.grading.atomic`).
"""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markdown

from autograder.config import Assignment
from autograder.grading import atomic
from autograder.grading.models import TestOutcome
from autograder.grading.plots import Pictures
from autograder.grading.scoring import NOTEBOOK_PART, PartScore, Score, ScoredTest, part_points

RESULTS = "results.json"
FEEDBACK_MD = "feedback.md"
FEEDBACK_HTML = "feedback.html"
GRADES_CSV = "grades.csv"

# What each way of failing means for the student, in their terms.
_STATUS_HINTS = {
    "failed": "your code ran but gave a wrong result",
    "error": "your code raised an exception",
    "timeout": "your code ran past the time limit (an endless loop, or far too slow)",
    "crashed": "the process running your code died (it exited or went past the memory cap)",
}
# A written answer in the notebook, scored later by hand (status "pending").
PENDING_OUTPUT = "graded by a TA (pending): the points appear once a TA has scored it"
_MAX_MESSAGE_LINES = 25
_MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class SubmissionReport:
    """Everything the reports of one submission are made from."""

    name: str
    score: Score
    flags: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    error: str | None = None  # why the submission could not be graded at all
    notes: list[str] = field(default_factory=list)  # for the student, e.g. a missing file
    pictures: Pictures | None = None


def write_reports(dest: Path, assignment: Assignment, report: SubmissionReport) -> None:
    """Write ``results.json``, ``feedback.md`` and ``feedback.html`` into ``dest``."""
    atomic.write_json(dest / RESULTS, gradescope_results(assignment, report))
    text = feedback_markdown(assignment, report, base=dest)
    atomic.write_text(dest / FEEDBACK_MD, text)
    atomic.write_text(dest / FEEDBACK_HTML, feedback_html(text, base=dest, title=report.name))


# --- results.json ----------------------------------------------------------------------------


def gradescope_results(assignment: Assignment, report: SubmissionReport) -> dict[str, Any]:
    """The submission's result in Gradescope's ``results.json`` format.

    Skipped tests (e.g. the GPU variant on a CPU host) are worth nothing and are left out.
    A pending test (a written answer a TA scores later) has score 0 and no ``status``: Gradescope
    knows only passed/failed, and it has failed nothing.
    """
    tests = []
    for part_number, part in enumerate(report.score.parts.values(), start=1):
        ran = [t for t in part.tests if t.outcome.status != "skipped"]
        for test_number, test in enumerate(ran, start=1):
            entry = {
                "name": f"[{part.part}] {display_name(test.outcome)}",
                "number": f"{part_number}.{test_number}",
                "score": _round(test.points),
                "max_score": _round(test.max_points),
                "status": "passed" if test.outcome.passed else "failed",
                "visibility": assignment.hidden_tests_visibility,
                "output": _test_output(test.outcome, report.error),
                "tags": [part.part],
            }
            if _pending(test):
                del entry["status"]
            tests.append(entry)
    return {
        "score": _round(report.score.total),
        "execution_time": round(report.wall_time_s),
        "output": _summary(assignment, report),
        # The total and this summary are the student's from the start; the tests' details
        # follow the course's setting for hidden tests.
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {"flags": list(report.flags)},
    }


def _summary(assignment: Assignment, report: SubmissionReport) -> str:
    score = report.score
    lines = [f"{assignment.title}: {_pts(score.total)} / {_pts(score.max_total)} points"]
    if report.error:
        lines.append(f"Your submission could not be graded: {report.error}")
    lines += report.notes
    lines += [f"Flag: {flag}" for flag in report.flags]
    not_graded = [p.part for p in score.parts.values() if not p.graded]
    if not_graded:
        lines.append(f"Not graded in this run: {', '.join(not_graded)}")
    return "\n".join(lines)


def _test_output(outcome: TestOutcome, error: str | None) -> str:
    if error:
        return f"not graded: {error}"
    if outcome.passed:
        return "passed"
    if outcome.status == "pending":
        return PENDING_OUTPUT
    hint = _STATUS_HINTS.get(outcome.status, outcome.status)
    message = student_message(outcome.message)
    return f"{hint}.\n{message}" if message else f"{hint}."


def display_name(outcome: TestOutcome) -> str:
    """The test's name, with its parameters when it is one case of a parametrized test."""
    _, bracket, params = outcome.nodeid.partition("[")
    if bracket and params.endswith("]") and not outcome.name.endswith(f"[{params}"):
        return f"{outcome.name} [{params[:-1]}]"
    return outcome.name


def student_message(message: str) -> str:
    """The part of a test's message meant for students: no traceback, no test source, bounded.

    Hidden suites put what was expected and what came out into their assert messages; a
    traceback (which quotes test code) or a line pointing into a test file is cut off here as a
    second line of defence.
    """
    message = message.split("Traceback (most recent call last)")[0]
    lines = [line.rstrip() for line in message.strip().splitlines()]
    kept = [line for line in lines if not re.search(r"test_\w*\.py|tests[/\\]hidden", line)]
    text = "\n".join(kept[:_MAX_MESSAGE_LINES])
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


# --- feedback.md / feedback.html ------------------------------------------------------------


def feedback_markdown(assignment: Assignment, report: SubmissionReport, *, base: Path) -> str:
    """The student's feedback; picture links are relative to ``base`` (the feedback's folder)."""
    score = report.score
    out = [
        f"# {assignment.title}",
        "",
        f"Submission **{report.name}**: **{_pts(score.total)} / {_pts(score.max_total)}** points.",
        "",
    ]
    if report.error:
        out += [f"> **Your submission could not be graded:** {report.error}", ""]
    out += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.flags:
        out += ["Flags the grader raised (what it saw your code try, or why it stopped):", ""]
        out += [f"- {flag}" for flag in report.flags] + [""]
    out += ["| part | points | tests passed |", "| --- | --- | --- |"]
    for part in score.parts.values():
        if part.graded:
            ran = len(part.tests) - len(part.skipped)
            points = f"{_pts(part.earned)} / {_pts(part.max_points)}"
            out.append(f"| {part.part} | {points} | {len(part.passed)} / {ran} |")
        else:
            out.append(f"| {part.part} | not graded | - |")
    out.append("")
    if not report.error:  # otherwise every part failed for that one reason, said above
        for part in score.parts.values():
            if part.graded:
                out += _part_section(assignment, part)
    if report.pictures is not None:
        out += _pictures_section(report.pictures, base)
    return "\n".join(out).rstrip() + "\n"


def _part_section(assignment: Assignment, part: PartScore) -> list[str]:
    where = _part_file(assignment, part.part)
    out = [f"## {part.part}: {_pts(part.earned)} / {_pts(part.max_points)}", ""]
    if not part.tests:
        return [*out, f"No test of this part ran; look at `{where}`.", ""]
    if part.passed:
        out += ["Passed:", ""] + [f"- {display_name(t.outcome)}" for t in part.passed] + [""]
    failed = [t for t in part.failed if not _pending(t)]
    if failed:
        out += ["To fix:", ""]
        for test in failed:
            outcome = test.outcome
            points = _pts(test.max_points)
            out.append(f"- **{display_name(outcome)}** ({points} points): {_hint(outcome)}.")
            out.append(f"  Look at `{where}`.")
            message = student_message(outcome.message)
            if message:
                out += ["", "  ```text", *(f"  {line}" for line in message.splitlines()), "  ```"]
        out.append("")
    pending = [t for t in part.tests if _pending(t)]
    if pending:
        out += ["Graded by a TA (pending; the points appear once scored):", ""]
        out += [f"- {display_name(t.outcome)} ({_pts(t.max_points)} points)" for t in pending]
        out.append("")
    if part.skipped:
        out += ["Not run on this grading host (they cost you nothing):", ""]
        out += [f"- {display_name(t.outcome)}" for t in part.skipped] + [""]
    return out


def _pending(test: ScoredTest) -> bool:
    return test.outcome.status == "pending"


def _hint(outcome: TestOutcome) -> str:
    if "not implemented yet" in outcome.message:
        return "this function is still the stub: write its body"
    return _STATUS_HINTS.get(outcome.status, outcome.status)


def _part_file(assignment: Assignment, part: str) -> str:
    if part == NOTEBOOK_PART and assignment.notebook is not None:
        return assignment.notebook.file
    return f"flows/{part}.py"


def _pictures_section(pictures: Pictures, base: Path) -> list[str]:
    out = ["## What your flows learned", ""]
    for model, path in pictures.images.items():
        out += [
            f"### {model}",
            "",
            f"![{model}: density, samples, loss]({_relative(path, base)})",
            "",
        ]
        if model in pictures.notes:
            out += [f"_{pictures.notes[model]}._", ""]
    for model, note in pictures.notes.items():
        if model not in pictures.images:
            out += [f"### {model}", "", f"_{note}._", ""]
    return out


def feedback_html(text: str, *, base: Path, title: str) -> str:
    """Render the feedback's markdown; local pictures are embedded, so the file stands alone."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match[str]) -> str:
        path = base / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}"data:image/png;base64,{data}"'

    body = re.sub(r'(<img[^>]*?src=)"([^":]+\.png)"', inline, body)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Feedback: {_escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "img{max-width:100%}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )


# --- grades.csv ------------------------------------------------------------------------------


def grades_row(report: SubmissionReport, key: str | None) -> dict[str, Any]:
    """One ``grades.csv`` row (JSON-compatible, so it can be stored and the CSV rebuilt)."""
    row: dict[str, Any] = {
        "name": report.name,
        "total": _round(report.score.total),
        "max": _round(report.score.max_total),
    }
    for part in report.score.parts.values():
        row[part.part] = _round(part.earned) if part.graded else ""
    row["flags"] = "; ".join(report.flags)
    row["wall_time_s"] = round(report.wall_time_s, 1)
    row["key"] = key or ""
    return row


def write_grades_csv(path: Path, assignment: Assignment, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (from :func:`grades_row`) sorted by name, one column per part."""
    columns = ["name", "total", "max", *part_points(assignment), "flags", "wall_time_s", "key"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["name"]):
        writer.writerow(row)
    return atomic.write_text(path, buffer.getvalue())


def format_table(
    assignment: Assignment, rows: list[dict[str, Any]], *, resumed: set[str] | None = None
) -> str:
    """A plain-text table of :func:`grades_row` rows: submission, each part, total, flags."""
    parts = list(part_points(assignment))
    header = ["submission", *parts, "total", "flags"]
    body = [
        [
            row["name"] + (" (resumed)" if resumed and row["name"] in resumed else ""),
            *(_cell(row.get(part, "")) for part in parts),
            f"{_cell(row['total'])}/{_cell(row['max'])}",
            _shorten(row.get("flags", ""), 60),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    return "-" if value == "" else _pts(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# --- helpers ---------------------------------------------------------------------------------


def _round(value: float) -> float:
    return round(float(value), 4)


def _pts(value: float) -> str:
    return f"{round(float(value), 2):g}"


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
