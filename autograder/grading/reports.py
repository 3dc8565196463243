"""The ``reports`` stage: what a graded submission leaves behind.

- ``results.json`` in Gradescope's autograder format (one entry per test that ran, tagged with
  its part; hidden tests shown as ``hidden_tests_visibility`` in ``course.yml`` says), and the
  figures of the tests that passed as its ``leaderboard`` (:mod:`autograder.grading.leaderboard`);
- ``feedback.md`` and ``feedback.html`` for the student (:mod:`autograder.grading.feedback`:
  both rendered from one view, everything from the submission escaped): what to fix per part,
  what passed, the pictures. Only the messages the tests wrote for students appear, never a
  line of test code;
- ``grades.csv`` for the instructor: one row per submission.

Every file is written atomically (:mod:`autograder.grading.atomic`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from autograder.config import Assignment
from autograder.grading import atomic, feedback
from autograder.grading.feedback import display_name, points_text, status_words, student_message
from autograder.grading.leaderboard import gradescope_entries
from autograder.grading.models import TestOutcome
from autograder.grading.scoring import ScoredTest, part_points
from autograder.grading.submission_report import SubmissionReport

RESULTS = "results.json"
FEEDBACK_MD = "feedback.md"
FEEDBACK_HTML = "feedback.html"
GRADES_CSV = "grades.csv"

# A written answer in the notebook, scored later by hand (status "pending").
PENDING_OUTPUT = "graded by a TA (pending): the points appear once a TA has scored it"


def write_reports(dest: Path, assignment: Assignment, report: SubmissionReport) -> None:
    """Write ``results.json``, ``feedback.md`` and ``feedback.html`` into ``dest``."""
    atomic.write_json(dest / RESULTS, gradescope_results(assignment, report))
    view = feedback.build_view(assignment, report, base=dest)
    atomic.write_text(dest / FEEDBACK_MD, feedback.render_markdown(view))
    atomic.write_text(dest / FEEDBACK_HTML, feedback.render_html(view))


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
    results = {
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
    board = gradescope_entries(report.leaderboard)
    if board:  # Gradescope's leaderboard columns (an assignment with it enabled shows them)
        results["leaderboard"] = board
    return results


def _summary(assignment: Assignment, report: SubmissionReport) -> str:
    score = report.score
    lines = [
        f"{assignment.title}: {points_text(score.total)} / {points_text(score.max_total)} points"
    ]
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
    _, hint = status_words(outcome)
    message = student_message(outcome.message)
    return f"{hint}.\n{message}" if message else f"{hint}."


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
    columns.append("submission")  # the raw path a (sanitised) name came from
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
    return "-" if value == "" else points_text(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# --- helpers ---------------------------------------------------------------------------------


def _round(value: float) -> float:
    return round(float(value), 4)


def _pending(test: ScoredTest) -> bool:
    return test.outcome.status == "pending"
