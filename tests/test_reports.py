"""Reports: Gradescope's format, the student's feedback (with pictures), grades.csv, atomicity.

The feedback is checked as a browser and markdown renderers see it: HTML is parsed (never
matched as strings), and ``feedback.md`` is rendered by two markdown engines that let raw HTML
through (mistune, CommonMark-like; Python-Markdown) and the result parsed the same way, so a
payload that escaped its context would show up as an element.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import markdown
import matplotlib.image
import mistune
import numpy as np
import pytest

from autograder.config import Assignment
from autograder.grading import atomic, models
from autograder.grading.feedback import (
    build_view,
    points_text,
    render_html,
    render_markdown,
    student_message,
)
from autograder.grading.models import Artifact, SuiteRun
from autograder.grading.plots import EXPECTED_MODELS, draw_pictures
from autograder.grading.reports import (
    SubmissionReport,
    display_name,
    format_table,
    grades_row,
    gradescope_results,
    write_grades_csv,
    write_reports,
)
from autograder.grading.scoring import NOTEBOOK_PART, score
from tests.conftest import REPO

SCHEMA = json.loads((REPO / "tests" / "gradescope_results.schema.json").read_text())
# A failure message as a careless test might leave it: the student part, then test internals.
LEAKY_MESSAGE = (
    "log-det of AffineCoupling should be -(log-det of its inverse); got 0.37 vs 0.37\n"
    "Traceback (most recent call last):\n"
    '  File "/x/tests/hidden/normalizing_flows/test_coupling.py", line 40\n'
    "    assert torch.allclose(ld_f, -ld_inv), secret_helper(layer)\n"
)


def density_artifacts(model: str) -> list[Artifact]:
    """What the training tests record: a two-bump density on a 64 x 64 grid, points, losses."""
    xs, ys = np.meshgrid(np.linspace(-2, 3, 64), np.linspace(-1.5, 2, 64))
    log_prob = -((xs - 0.5) ** 2 + ys**2) * 2 - np.log(np.pi)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 2)).tolist()
    density = {
        "model": model,
        "extent": [-2, 3, -1.5, 2],
        "log_prob": log_prob.tolist(),
        "data": points,
        "samples": points,
    }
    losses = {"model": model, "losses": list(np.linspace(2.5, 0.4, 200))}
    return [Artifact(f"{model}_density", density), Artifact(f"{model}_losses", losses)]


@pytest.fixture(scope="module")
def run(assignment: Assignment) -> SuiteRun:
    """Coupling half right (one failure with a leaky message), a GPU test skipped, RealNVP only."""
    tests = [
        models.TestOutcome(f"test_{p}.py::test_ok", f"{p} works", p, 1.0, "passed")
        for p in assignment.parts
    ]
    tests += [
        models.TestOutcome(
            "test_coupling.py::test_logdet",
            "log-dets negate",
            "coupling",
            1.0,
            "failed",
            LEAKY_MESSAGE,
        ),
        models.TestOutcome(
            "test_train.py::test_gpu", "trains on the GPU", "train", 1.0, "skipped", "no CUDA"
        ),
    ]
    return SuiteRun(
        tests=tests, flags=["refused open: /etc/passwd"], artifacts=density_artifacts("RealNVP")
    )


@pytest.fixture(scope="module")
def written(
    assignment: Assignment, run: SuiteRun, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    dest = tmp_path_factory.mktemp("reports") / "alice"
    report = SubmissionReport(
        name="alice",
        score=score(assignment, run),
        flags=run.flags,
        wall_time_s=12.3,
        pictures=draw_pictures(run.artifacts, dest / "plots"),
    )
    write_reports(dest, assignment, report)
    return dest


def test_results_validate_against_gradescope_schema(written: Path) -> None:
    jsonschema.validate(json.loads((written / "results.json").read_text()), SCHEMA)


def test_schema_rejects_what_gradescope_rejects() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"score": 1, "tests": [{"score": 1, "status": "ok"}]}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"output": "no score anywhere"}, SCHEMA)


def test_results_content(assignment: Assignment, written: Path) -> None:
    results = json.loads((written / "results.json").read_text())
    coupling = assignment.parts["coupling"]
    assert results["score"] == pytest.approx(sum(assignment.parts.values()) - coupling / 2)
    assert results["extra_data"] == {"flags": ["refused open: /etc/passwd"]}
    assert results["execution_time"] == 12
    tests = results["tests"]
    # The skipped GPU test is not listed: it is worth nothing on this host.
    assert len(tests) == len(assignment.parts) + 1
    assert {t["visibility"] for t in tests} == {assignment.hidden_tests_visibility}
    assert all(t["tags"] == [t["name"][1:].split("]")[0]] for t in tests)
    assert sum(t["max_score"] for t in tests) == pytest.approx(sum(assignment.parts.values()))
    failed = [t for t in tests if t["status"] == "failed"]
    assert [t["tags"] for t in failed] == [["coupling"]]
    assert "got 0.37 vs 0.37" in failed[0]["output"]


def test_feedback_names_parts_and_hides_test_code(assignment: Assignment, written: Path) -> None:
    text = (written / "feedback.md").read_text()
    for part in assignment.parts:
        assert f"### {part}:" in text
    assert "log-dets negate" in text and "got 0.37 vs 0.37" in text
    assert "Look at `flows/coupling.py`" in text
    assert "trains on the GPU" in text  # listed as not run, for free
    for leak in ("Traceback", "test_coupling.py", "assert torch.allclose", "secret_helper"):
        assert leak not in text
        assert leak not in (written / "results.json").read_text()


def test_feedback_shows_pictures_and_notes_missing_ones(written: Path) -> None:
    text = (written / "feedback.md").read_text()
    assert "![RealNVP" in text and "(plots/realnvp.png)" in text
    missing = [m for m in EXPECTED_MODELS if m != "RealNVP"]
    for model in missing:
        assert f"no picture of your {model}" in text


def test_density_picture_is_a_real_image(written: Path) -> None:
    path = written / "plots" / "realnvp.png"
    assert path.stat().st_size > 10_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_html_embeds_the_pictures(written: Path) -> None:
    page = parse_html((written / "feedback.html").read_text())
    (image,) = page.find("img")
    assert image.attrs["src"].startswith("data:image/png;base64,")
    assert "RealNVP" in image.attrs["alt"]
    assert len(page.find("tr")) == 1 + len(page.find("tbody")[0].find("tr"))


def test_html_lists_failures_first_and_collapses_what_passed(
    assignment: Assignment, written: Path
) -> None:
    page = parse_html((written / "feedback.html").read_text())
    (to_fix,) = page.find("section", id="to-fix")
    (failure,) = to_fix.find("li", cls="failure")
    assert failure.first("strong", cls="test").text == "log-dets negate"
    assert failure.first("span", cls="status").text == "a wrong result"
    assert failure.first("pre", cls="message").text == student_message(LEAKY_MESSAGE)
    assert "flows/coupling.py" in failure.text
    passed = page.find("details", cls="passed")
    assert len(passed) == len(assignment.parts)  # one per module part
    assert "coupling works" in [li.text for d in passed for li in d.find("li")]
    assert not to_fix.find("details")


def test_truncated_points_are_dropped_not_fatal(tmp_path: Path) -> None:
    # The grader bounds what a test may send: the tail of a long list can arrive as None.
    artifacts = density_artifacts("MAF")
    artifacts[0].data["samples"] = artifacts[0].data["samples"][:100] + [None, [1.0], None]
    pictures = draw_pictures(artifacts, tmp_path)
    assert pictures.images["MAF"].is_file() and "MAF" not in pictures.notes


def test_broken_artifacts_become_notes(tmp_path: Path) -> None:
    broken = [Artifact("MAF_density", {"extent": [0, 1, 0, 1], "log_prob": [1.0, 2.0]})]
    pictures = draw_pictures(broken, tmp_path)
    assert "MAF" not in pictures.images
    assert "unusable" in pictures.notes["MAF"]


def test_grades_csv_one_row_per_submission(
    assignment: Assignment, run: SuiteRun, tmp_path: Path
) -> None:
    graded = score(assignment, run)
    partial = score(assignment, run, parts=["maf"])
    rows = [
        grades_row(SubmissionReport("bob", partial, wall_time_s=3.0), key="k2"),
        grades_row(SubmissionReport("alice", graded, flags=run.flags), key="k1"),
    ]
    path = write_grades_csv(tmp_path / "grades.csv", assignment, rows)
    table = list(csv.DictReader(path.open()))
    assert [r["name"] for r in table] == ["alice", "bob"]
    assert list(table[0])[:3] == ["name", "total", "max"]
    assert float(table[0]["coupling"]) == pytest.approx(assignment.parts["coupling"] / 2)
    assert table[1]["coupling"] == ""  # not graded, not 0
    assert table[0]["flags"] == "refused open: /etc/passwd" and table[0]["key"] == "k1"
    printed = format_table(assignment, rows)
    assert "alice" in printed and "coupling" in printed.splitlines()[0]


def test_gradescope_results_for_unrequested_parts(assignment: Assignment, run: SuiteRun) -> None:
    report = SubmissionReport("carol", score(assignment, run, parts=["maf"]))
    results = gradescope_results(assignment, report)
    jsonschema.validate(results, SCHEMA)
    assert results["score"] == assignment.parts["maf"]
    assert "Not graded in this run" in results["output"]


def test_atomic_write_leaves_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = atomic.write_text(tmp_path / "results.json", "old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


@pytest.mark.parametrize(
    ("nodeid", "name", "shown"),
    [
        (
            "test_maf.py::test_order[random]",
            "MADE is autoregressive",
            "MADE is autoregressive [random]",
        ),
        ("test_maf.py::test_order", "MADE is autoregressive", "MADE is autoregressive"),
        ("test_train.py::test_fit[MAF]", "RealNVP and MAF fit", "RealNVP and MAF fit [MAF]"),
        (
            "test_maf.py::test_order[d=3]",
            "test_maf.py::test_order[d=3]",
            "test_maf.py::test_order[d=3]",
        ),
    ],
)
def test_parametrized_tests_show_their_case(nodeid: str, name: str, shown: str) -> None:
    assert display_name(models.TestOutcome(nodeid, name, "maf", 1.0, "passed")) == shown


@pytest.fixture(scope="module")
def with_written_answer(assignment: Assignment, run: SuiteRun) -> SubmissionReport:
    """The run above plus the notebook: one autograded cell passed, one written answer pending."""
    notebook = [
        models.TestOutcome("explore.ipynb::plot", "density plot", NOTEBOOK_PART, 1.0, "passed"),
        models.TestOutcome(
            "explore.ipynb::why", "why log-det is O(d)", NOTEBOOK_PART, 1.0, "pending", ""
        ),
    ]
    tests = SuiteRun(tests=[*run.tests, *notebook], flags=run.flags)
    return SubmissionReport(name="dana", score=score(assignment, tests))


def test_pending_answer_is_not_failed_in_results(
    assignment: Assignment, with_written_answer: SubmissionReport
) -> None:
    results = gradescope_results(assignment, with_written_answer)
    jsonschema.validate(results, SCHEMA)
    (pending,) = [t for t in results["tests"] if "why log-det" in t["name"]]
    assert "status" not in pending, "Gradescope knows only passed/failed; pending is neither"
    assert pending["score"] == 0 and pending["max_score"] > 0
    assert "graded by a TA" in pending["output"]
    failed = [t["name"] for t in results["tests"] if t.get("status") == "failed"]
    assert failed == ["[coupling] log-dets negate"]


def test_pending_answer_is_not_listed_to_fix(
    assignment: Assignment, with_written_answer: SubmissionReport, tmp_path: Path
) -> None:
    view = build_view(assignment, with_written_answer, base=tmp_path)
    text = render_markdown(view)
    to_fix, rest = text.split("## Everything else, part by part")
    assert f"### {NOTEBOOK_PART}:" not in to_fix and "why log-det" not in to_fix
    section = rest.split(f"### {NOTEBOOK_PART}:")[1]
    assert "Graded by a TA (pending" in section and "why log-det is O(d)" in section
    assert "- density plot" in section  # the autograded cell, under Passed
    failing = parse_html(render_html(view)).find("li", cls="failure")
    assert [li.first("strong").text for li in failing] == ["log-dets negate"]


# --- hostile submissions: everything they wrote comes out as text ----------------------------

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


@dataclass
class Element:
    """One parsed element: enough of a DOM to look things up by tag, class and id."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def elements(self) -> list[Element]:
        """This element and every element inside it, in document order."""
        found = [self]
        for child in self.children:
            if isinstance(child, Element):
                found += child.elements()
        return found

    def find(self, tag: str, *, cls: str | None = None, id: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements()[1:]
            if e.tag == tag
            and (cls is None or cls in e.attrs.get("class", "").split())
            and (id is None or e.attrs.get("id") == id)
        ]

    def first(self, tag: str, *, cls: str | None = None) -> Element:
        return self.find(tag, cls=cls)[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in _VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse_html(page: str) -> Element:
    """``page`` as an element tree (html.parser: the text a browser shows, entities decoded)."""
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


# What a student controls: exception and sys.exit texts, printed flags, file names in notes.
PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "```\n</pre><img src=x onerror=alert(3)>\n```\n<b>raw HTML after the fence</b>",
    "````python\n~~~\n<iframe src=javascript:alert(4)></iframe>\n`` ` ```",
    "# a heading?\n- a list? [a link](javascript:alert(5)) **bold** &lt;entity&gt; &amp;",
]
# The elements the templates themselves write (HTML), and those markdown of them renders into.
TEMPLATE_TAGS = {
    "#document", "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p",
    "strong", "em", "section", "ul", "ol", "li", "code", "pre", "table", "thead", "tbody", "tr",
    "th", "td", "span", "details", "summary", "figure", "figcaption", "img",
}  # fmt: skip
MARKDOWN_TAGS = {
    "#document", "h1", "h2", "h3", "h4", "p", "strong", "em", "blockquote", "ul", "li", "code",
    "pre", "table", "thead", "tbody", "tr", "th", "td", "img",
}  # fmt: skip
_STATUSES = ["failed", "error", "timeout", "memory", "crashed"]


@pytest.fixture(scope="module")
def hostile(
    assignment: Assignment, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SuiteRun]:
    """A submission whose every failure message, note and flag carries a payload."""
    tests = [
        models.TestOutcome(f"test_{p}.py::test_ok", f"{p} works", p, 1.0, "passed")
        for p in assignment.parts
    ]
    for number, payload in enumerate(PAYLOADS):
        part = ["coupling", "maf", "train"][number % 3]
        tests.append(
            models.TestOutcome(
                f"test_{part}.py::test_{number}",
                f"check {number} {payload.splitlines()[0]}",
                part,
                1.0,
                _STATUSES[number % len(_STATUSES)],
                f"expected {number}, got:\n{payload}",
            )
        )
    run = SuiteRun(tests=tests, flags=[f"sys.exit: {p}" for p in PAYLOADS])
    dest = tmp_path_factory.mktemp("hostile") / "mallory"
    report = SubmissionReport(
        name="mallory",
        score=score(assignment, run),
        flags=run.flags,
        notes=[f"flows/{p}.py is not in your submission" for p in PAYLOADS],
        pictures=draw_pictures(density_artifacts("MAF"), dest / "plots"),
    )
    write_reports(dest, assignment, report)
    return dest, run


def _failing(run: SuiteRun) -> list[models.TestOutcome]:
    return [t for t in run.tests if not t.passed]


def _assert_inert(page: Element, allowed: set[str]) -> None:
    tags = {e.tag for e in page.elements()}
    assert tags <= allowed, f"elements a payload injected: {tags - allowed}"
    handlers = [(e.tag, a) for e in page.elements() for a in e.attrs if a.startswith("on")]
    assert not handlers
    for image in page.find("img"):
        assert image.attrs["src"].startswith(("data:image/png;base64,", "plots/"))


def test_payloads_are_text_in_the_html(hostile: tuple[Path, SuiteRun]) -> None:
    dest, run = hostile
    page = parse_html((dest / "feedback.html").read_text())
    _assert_inert(page, TEMPLATE_TAGS)
    # Escaped, not dropped: the student reads exactly what their code said.
    assert [li.text for li in page.first("ul", cls="flags").find("li")] == run.flags
    notes = [p.text for p in page.find("p", cls="note")]
    assert notes == [f"flows/{p}.py is not in your submission" for p in PAYLOADS]


def test_to_fix_has_one_item_per_failure_with_its_own_message(
    hostile: tuple[Path, SuiteRun],
) -> None:
    dest, run = hostile
    page = parse_html((dest / "feedback.html").read_text())
    (to_fix,) = page.find("section", id="to-fix")
    items = to_fix.find("li", cls="failure")
    failing = _failing(run)
    assert len(items) == len(failing)
    by_name = {t.name: t for t in failing}
    for item in items:
        test = by_name.pop(item.first("strong", cls="test").text)
        assert item.first("pre", cls="message").text == student_message(test.message)
        assert len(item.find("pre")) == 1
    assert not by_name  # every failing test had its item
    # Grouped by part: one list per part, in the course's order.
    lists = to_fix.find("ol", cls="failures")
    assert [ol.attrs["data-part"] for ol in lists] == ["coupling", "maf", "train"]


def test_statuses_in_words(hostile: tuple[Path, SuiteRun]) -> None:
    dest, run = hostile
    page = parse_html((dest / "feedback.html").read_text())
    words = {span.attrs["class"].split()[1]: span.text for span in page.find("span", cls="status")}
    assert words == {
        "status-failed": "a wrong result",
        "status-error": "an exception",
        "status-timeout": "a timeout",
        "status-memory": "out of memory",
        "status-crashed": "a crash",
    }


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(mistune.create_markdown(escape=False, plugins=["table"]), id="mistune"),
        pytest.param(
            lambda text: markdown.markdown(text, extensions=["tables", "fenced_code"]),
            id="python-markdown",
        ),
    ],
)
def test_payloads_are_text_in_the_markdown(render, hostile: tuple[Path, SuiteRun]) -> None:
    dest, run = hostile
    page = parse_html(render((dest / "feedback.md").read_text()))
    _assert_inert(page, MARKDOWN_TAGS)
    failing = _failing(run)
    assert len(page.find("h4")) == len(failing)  # one heading per failing test
    blocks = [pre.text.rstrip("\n") for pre in page.find("pre")]
    # Each message in a block of its own: nothing closed its fence early.
    assert blocks == [student_message(t.message) for t in _in_part_order(failing)]
    flags = [code.text for li in page.find("li") for code in li.find("code")]
    assert [" ".join(f.split()) for f in run.flags] == flags
    for note in page.find("blockquote"):
        assert note.text.strip().startswith("flows/") and not note.find("a")


def _in_part_order(tests: list[models.TestOutcome]) -> list[models.TestOutcome]:
    order = ["coupling", "maf", "train"]
    return sorted(tests, key=lambda t: order.index(t.part))


def test_timeout_and_memory_blame_the_function_that_ran(
    assignment: Assignment, tmp_path: Path
) -> None:
    slow = "timed out after 90 s in coupling.AffineCoupling.forward"
    tests = [
        models.TestOutcome(
            "test_train.py::test_fit", "RealNVP fits", "train", 1.0, "timeout", slow
        ),
        models.TestOutcome("test_maf.py::test_big", "wide MADE", "maf", 1.0, "memory", "ran out"),
        models.TestOutcome("test_maf.py::test_ok", "MADE works", "maf", 1.0, "passed"),
    ]
    graded = score(assignment, SuiteRun(tests=tests), parts=["train", "maf"])
    assert graded.parts["maf"].earned == pytest.approx(assignment.parts["maf"] / 2)
    assert graded.parts["train"].earned == 0
    view = build_view(assignment, SubmissionReport("slowpoke", graded), base=tmp_path)
    timeout, memory = view.failures[::-1] if view.failures[0].status == "memory" else view.failures
    assert (timeout.look_at, timeout.function) == ("flows/coupling.py", "AffineCoupling.forward")
    assert (memory.status_words, memory.look_at, memory.function) == (
        "out of memory",
        "flows/maf.py",
        "",
    )
    assert "Look at `flows/coupling.py` (`AffineCoupling.forward`)" in render_markdown(view)
    results = gradescope_results(assignment, SubmissionReport("slowpoke", graded))
    (oom,) = [t for t in results["tests"] if t["name"] == "[maf] wide MADE"]
    assert oom["status"] == "failed" and oom["output"].startswith("your code needed more memory")


def test_a_part_whose_tests_never_reported_is_listed_to_fix(
    assignment: Assignment, tmp_path: Path
) -> None:
    ok = models.TestOutcome("test_maf.py::test_ok", "MADE works", "maf", 1.0, "passed")
    graded = score(assignment, SuiteRun(tests=[ok]), parts=["maf", "train"])
    view = build_view(assignment, SubmissionReport("quiet", graded), base=tmp_path)
    (to_fix,) = parse_html(render_html(view)).find("section", id="to-fix")
    heading = f"train: 0 / {points_text(assignment.parts['train'])} points"
    assert [p.text for p in to_fix.find("h3")] == [heading]
    assert "flows/train.py" in to_fix.first("p", cls="nothing-ran").text
    assert not to_fix.find("li")
    markdown_to_fix = render_markdown(view).split("## To fix")[1].split("## Everything else")[0]
    assert f"### {heading}" in markdown_to_fix and "`flows/train.py`" in markdown_to_fix
