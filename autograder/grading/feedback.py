"""The student's feedback, ``feedback.md`` and ``feedback.html``, from one view of a submission.

Both files are rendered by Jinja2 from ``templates/`` and from the same :class:`FeedbackView`,
built once from the :class:`SubmissionReport` (:mod:`.submission_report`), so they cannot drift
apart. Every string that came from a submission is hostile: test messages quote the student's
exceptions and ``sys.exit`` texts, flags quote what the code tried, notes quote file names.

- HTML: the environment autoescapes every expression, so no template can forget to.
- Markdown: every expression is escaped by default too (``finalize``): ``<``, ``>`` and ``&``
  become entities (which every markdown renderer honours, so no raw HTML gets through) and
  markdown syntax is backslash-escaped. Messages go in fenced blocks whose fence is longer than
  any backtick run in them, so nothing in a message can close its fence. Only the two filters
  that build such blocks (``code``, ``code_block``) return text marked safe.

Layout, in both: the score and the parts' table, what to fix (grouped by part: the test, the
way it failed in words, where to look, and its message: what was expected and what came out),
then what passed (collapsed in HTML), then the pictures of what the student's flows learned.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from autograder.config import PACKAGE, Assignment
from autograder.grading.models import TestOutcome
from autograder.grading.scoring import NOTEBOOK_PART, PartScore, ScoredTest
from autograder.grading.submission_report import SubmissionReport

MARKDOWN_TEMPLATE = "feedback.md.j2"
HTML_TEMPLATE = "feedback.html.j2"

# Each way of failing: (the status in words, what it means for the student).
STATUS_WORDS: dict[str, tuple[str, str]] = {
    "failed": (
        "a wrong result",
        "your code ran, but what it returned is not what the test expected",
    ),
    "error": ("an exception", "your code raised an exception"),
    "timeout": (
        "a timeout",
        "your code ran past the time limit (an endless loop, or far too slow)",
    ),
    "memory": (
        "out of memory",
        "your code needed more memory than the limit (a tensor far larger than the data)",
    ),
    "crashed": (
        "a crash",
        "the process running your code died (it called exit, or the interpreter crashed)",
    ),
}
_STUB = ("not written yet", "this function is still the stub; write its body")
# Where a timeout, memory failure or crash happened: "... in coupling.AffineCoupling.forward".
_WHERE = re.compile(r"\bin ([A-Za-z_]\w*)\.([A-Za-z_][\w.]*\w)")
_LOCATED = ("timeout", "memory", "crashed")
_MAX_MESSAGE_LINES = 25
_MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class FailureView:
    """One failing test, as the student reads it."""

    name: str
    points: str  # "1 point", "8.33 points"
    status: str  # the outcome's status ("failed", "memory", ...): a CSS class in HTML
    status_words: str  # "a wrong result", "out of memory", ...
    hint: str  # what that means for the student
    look_at: str  # the file to open, e.g. "flows/coupling.py"
    function: str  # the function that was running, e.g. "AffineCoupling.forward", or ""
    message: str  # what was expected and what came out; never test code


@dataclass(frozen=True)
class PartView:
    """One part: its points and its tests, sorted by what the student should do about them."""

    part: str
    earned: str
    max_points: str
    graded: bool
    look_at: str
    ran: int = 0
    failures: list[FailureView] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (test, "2 points")
    skipped: list[str] = field(default_factory=list)

    @property
    def nothing_ran(self) -> bool:
        return self.graded and self.ran == 0 and not self.pending


@dataclass(frozen=True)
class PictureView:
    """A picture of one trained model: a relative link (markdown), inline data (HTML), a note."""

    model: str
    link: str = ""
    data_uri: str = ""
    note: str = ""


@dataclass(frozen=True)
class FeedbackView:
    """Everything both feedback files show, already worded and bounded; nothing escaped yet."""

    title: str
    submission: str
    total: str
    max_total: str
    error: str | None
    notes: list[str]
    flags: list[str]
    parts: list[PartView]
    pictures: list[PictureView]

    @property
    def failures(self) -> list[FailureView]:
        return [f for part in self.parts for f in part.failures]

    @property
    def to_fix(self) -> list[PartView]:
        """Parts that lost points to a failure, or because none of their tests ran."""
        return [p for p in self.parts if p.failures or p.nothing_ran]


def render_markdown(view: FeedbackView) -> str:
    """``feedback.md``: CommonMark in which nothing from the submission is live markup."""
    return _environment(html=False).get_template(MARKDOWN_TEMPLATE).render(view=view)


def render_html(view: FeedbackView) -> str:
    """``feedback.html``: one self-contained page (pictures inline), everything escaped."""
    return _environment(html=True).get_template(HTML_TEMPLATE).render(view=view)


def build_view(assignment: Assignment, report: SubmissionReport, *, base: Path) -> FeedbackView:
    """The feedback's content; picture links are relative to ``base`` (the feedback's folder).

    When the submission could not be graded at all, every part failed for that one reason,
    which the view says once (``error``) instead of listing it per test.
    """
    score = report.score
    parts = [
        _part_view(assignment, part, detailed=not report.error) for part in score.parts.values()
    ]
    return FeedbackView(
        title=assignment.title,
        submission=report.name,
        total=points_text(score.total),
        max_total=points_text(score.max_total),
        error=report.error,
        notes=list(report.notes),
        flags=list(report.flags),
        parts=parts,
        pictures=_picture_views(report, base),
    )


def _part_view(assignment: Assignment, part: PartScore, *, detailed: bool) -> PartView:
    look_at = part_file(assignment, part.part)
    view = PartView(
        part=part.part,
        earned=points_text(part.earned),
        max_points=points_text(part.max_points),
        graded=part.graded,
        look_at=look_at,
        ran=len(part.tests) - len(part.skipped),
    )
    if not (part.graded and detailed):
        return view
    view.failures.extend(
        _failure_view(assignment, t, look_at) for t in part.failed if not _pending(t)
    )
    view.passed.extend(display_name(t.outcome) for t in part.passed)
    view.pending.extend(
        (display_name(t.outcome), points_label(t.max_points)) for t in part.tests if _pending(t)
    )
    view.skipped.extend(display_name(t.outcome) for t in part.skipped)
    return view


def _failure_view(assignment: Assignment, test: ScoredTest, look_at: str) -> FailureView:
    outcome = test.outcome
    words, hint = status_words(outcome)
    function = ""
    where = _WHERE.search(outcome.message) if outcome.status in _LOCATED else None
    if where and where.group(1) in assignment.parts:
        # A slow coupling layer times out the training test: blame the layer, not train.py.
        look_at, function = f"{PACKAGE}/{where.group(1)}.py", where.group(2)
    return FailureView(
        name=display_name(outcome),
        points=points_label(test.max_points),
        status=outcome.status,
        status_words=words,
        hint=hint,
        look_at=look_at,
        function=function,
        message=student_message(outcome.message),
    )


def _picture_views(report: SubmissionReport, base: Path) -> list[PictureView]:
    pictures = report.pictures
    if pictures is None:
        return []
    views = [
        PictureView(
            model,
            link=_relative(path, base),
            data_uri=_data_uri(path),
            note=pictures.notes.get(model, ""),
        )
        for model, path in pictures.images.items()
    ]
    views += [
        PictureView(model, note=note)
        for model, note in pictures.notes.items()
        if model not in pictures.images
    ]
    return views


# --- wording shared with results.json --------------------------------------------------------


def status_words(outcome: TestOutcome) -> tuple[str, str]:
    """How the test failed, in words, and what that means for the student."""
    if "not implemented yet" in outcome.message:
        return _STUB
    return STATUS_WORDS.get(outcome.status, (outcome.status, outcome.status))


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


def part_file(assignment: Assignment, part: str) -> str:
    """The file a student opens to work on ``part``."""
    if part == NOTEBOOK_PART and assignment.notebook is not None:
        return assignment.notebook.file
    return f"{PACKAGE}/{part}.py"


def points_text(value: float) -> str:
    """Points as people write them: ``12.5``, ``25``, ``8.33``."""
    return f"{round(float(value), 2):g}"


def points_label(value: float) -> str:
    """``1 point``, ``8.33 points``."""
    text = points_text(value)
    return f"{text} point" if text == "1" else f"{text} points"


def _pending(test: ScoredTest) -> bool:
    return test.outcome.status == "pending"


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _data_uri(path: Path) -> str:
    if path.suffix != ".png" or not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# --- rendering ---------------------------------------------------------------------------


@cache
def _environment(*, html: bool) -> jinja2.Environment:
    options: dict[str, Any] = {
        "loader": jinja2.PackageLoader("autograder.grading", "templates"),
        "undefined": jinja2.StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
    }
    if html:
        return jinja2.Environment(autoescape=True, **options)
    env = jinja2.Environment(autoescape=False, finalize=_markdown_finalize, **options)
    env.filters["code"] = markdown_code_span
    env.filters["code_block"] = markdown_code_block
    return env


def _markdown_finalize(value: Any) -> Any:
    """Escape every expression of the markdown template, except blocks built safe on purpose."""
    return value if isinstance(value, Markup) else markdown_text(str(value))


_INLINE_SYNTAX = re.compile(r"[\\`*\[\]]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_LINE_START_SYNTAX = re.compile(r"^(?:[-+](?=\s|$)|#{1,6}(?=\s|$)|=+\s*$|\d{1,9}(?=[.)](?:\s|$)))")


def markdown_text(text: str) -> str:
    """``text`` as inert inline markdown: one line, no HTML, no emphasis, links or code.

    ``<``, ``>`` and ``&`` become entities rather than backslash escapes because not every
    renderer (Python-Markdown, say) takes ``\\<`` as an escape; every renderer takes ``&lt;``.
    A leading ``#``, ``-``, ``1.`` would start a heading or a list where the text begins a line.
    """
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _INLINE_SYNTAX.sub(lambda m: "\\" + m.group(0), text)
    start = _LINE_START_SYNTAX.match(text)
    if start and start.group(0).isdigit():  # "1. x": the dot makes the list, not the number
        text = f"{start.group(0)}\\{text[start.end() :]}"
    elif start:
        text = "\\" + text
    return text


def _fence_for(text: str, *, minimum: int) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(minimum, longest + 1)


def markdown_code_span(text: str) -> Markup:
    """``text`` as one inline code span; a backtick in it cannot end the span early."""
    text = " ".join(str(text).split())
    fence = _fence_for(text, minimum=1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return Markup(f"{fence}{padded}{fence}")


def markdown_code_block(text: str) -> Markup:
    """``text`` in a fenced block at the left margin.

    The fence is longer than any backtick run in ``text``, so no line of it can close the
    block, and inside a fenced block HTML is shown, never interpreted.
    """
    fence = _fence_for(text, minimum=3)
    return Markup("\n".join([fence, *str(text).splitlines(), fence]))
