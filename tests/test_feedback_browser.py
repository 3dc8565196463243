"""A failing submission's ``feedback.html``, as a real browser (headless Chromium) shows it.

The unit tests parse the page with html.parser; this one lets Chromium parse it, lay it out and
decode its pictures, then reads back the DOM Chromium dumps. A probe script is appended to a
copy of the page (the page itself has none): after the load event it records, for every image,
whether it decoded and its natural size. Skipped where no Chromium is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from autograder.config import Assignment
from autograder.grading import models
from autograder.grading.feedback import student_message
from autograder.grading.models import SuiteRun
from autograder.grading.plots import draw_pictures
from autograder.grading.reports import SubmissionReport, write_reports
from autograder.grading.scoring import score
from tests.test_reports import PAYLOADS, TEMPLATE_TAGS, Element, density_artifacts, parse_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((found for name in BROWSERS if (found := shutil.which(name))), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BROWSER is None, reason=f"no headless browser found ({', '.join(BROWSERS)})"
    ),
]

PROBE = """<script id="probe-script">
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify([...document.images].map(
    (image) => ({complete: image.complete, width: image.naturalWidth, height: image.naturalHeight})
  ));
  document.body.appendChild(probe);
});
</script>
"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(BROWSER),
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Lets the load event and the probe run before the DOM is dumped; virtual time, so a
        # slow machine waits longer in real time instead of dumping too early.
        "--virtual-time-budget=10000",
        *args,
    ]
    if os.geteuid() == 0:  # Chromium refuses to start as root with its sandbox on
        command.insert(1, "--no-sandbox")
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.fixture(scope="module")
def failing(
    assignment: Assignment, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SuiteRun]:
    """Feedback of a submission failing one test of each kind, payloads in messages and flags."""
    statuses = ["failed", "error", "timeout", "memory", "crashed"]
    tests = [
        models.TestOutcome(f"test_{p}.py::test_ok", f"{p} works", p, 1.0, "passed")
        for p in assignment.parts
    ]
    tests += [
        models.TestOutcome(
            f"test_coupling.py::test_{number}",
            f"check {number}",
            ["coupling", "maf", "train"][number % 3],
            1.0,
            statuses[number % len(statuses)],
            f"expected {number}, got:\n{payload}",
        )
        for number, payload in enumerate(PAYLOADS)
    ]
    run = SuiteRun(tests=tests, flags=[f"sys.exit: {p}" for p in PAYLOADS])
    dest = tmp_path_factory.mktemp("browser") / "mallory"
    report = SubmissionReport(
        name="mallory",
        score=score(assignment, run),
        flags=run.flags,
        pictures=draw_pictures(
            density_artifacts("RealNVP") + density_artifacts("MAF"), dest / "plots"
        ),
    )
    write_reports(dest, assignment, report)
    return dest, run


@pytest.fixture(scope="module")
def dumped(failing: tuple[Path, SuiteRun], tmp_path_factory: pytest.TempPathFactory) -> Element:
    """The DOM Chromium built from the page (plus the probe), after the load event."""
    dest, _ = failing
    page = (dest / "feedback.html").read_text()
    assert "</body>" in page and "<script" not in page
    probed = dest / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    profile = tmp_path_factory.mktemp("chromium-profile")
    return parse_html(_chromium("--dump-dom", probed.as_uri(), profile=profile).stdout)


def test_one_list_item_per_failure_each_with_its_message(
    dumped: Element, failing: tuple[Path, SuiteRun]
) -> None:
    _, run = failing
    failed = [t for t in run.tests if not t.passed]
    (to_fix,) = dumped.find("section", id="to-fix")
    items = to_fix.find("li", cls="failure")
    assert len(items) == len(failed)
    shown = {item.first("strong", cls="test").text: item for item in items}
    for test in failed:
        assert shown[test.name].first("pre", cls="message").text == student_message(test.message)


def test_nothing_injected(dumped: Element, failing: tuple[Path, SuiteRun]) -> None:
    _, run = failing
    scripts = dumped.find("script")
    assert [s.attrs.get("id") for s in scripts] == ["probe-script"]  # only the test's own
    tags = {e.tag for e in dumped.elements()} - {"script"}
    assert tags <= TEMPLATE_TAGS, f"elements a payload injected: {tags - TEMPLATE_TAGS}"
    assert not [a for e in dumped.elements() for a in e.attrs if a.startswith("on")]
    assert [li.text for li in dumped.first("ul", cls="flags").find("li")] == run.flags


def test_pictures_load(dumped: Element) -> None:
    images = json.loads(dumped.find("pre", id="probe")[0].text)
    assert len(images) == 2  # RealNVP and MAF
    for image in images:
        assert image["complete"] and image["width"] > 600 and image["height"] > 200


def test_screenshot_renders(failing: tuple[Path, SuiteRun], tmp_path: Path) -> None:
    """A full render to PNG (left in the test's folder to look at); it must not be blank."""
    dest, _ = failing
    shot = tmp_path / "feedback.png"
    _chromium(
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        (dest / "feedback.html").as_uri(),
        profile=tmp_path / "profile",
    )
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels[..., :3].std() > 0.05
