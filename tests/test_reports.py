"""Reports: Gradescope's format, the student's feedback (with pictures), grades.csv, atomicity."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jsonschema
import matplotlib.image
import numpy as np
import pytest

from autograder.config import Assignment
from autograder.grading import atomic, models
from autograder.grading.models import Artifact, SuiteRun
from autograder.grading.plots import EXPECTED_MODELS, draw_pictures
from autograder.grading.reports import (
    SubmissionReport,
    display_name,
    feedback_markdown,
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
        assert f"## {part}:" in text
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
    html = (written / "feedback.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html
    assert 'src="plots/' not in html


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
    text = feedback_markdown(assignment, with_written_answer, base=tmp_path)
    section = text.split(f"## {NOTEBOOK_PART}:")[1]
    assert "To fix" not in section
    assert "Graded by a TA (pending" in section and "why log-det is O(d)" in section
    assert "- density plot" in section  # the autograded cell, under Passed
