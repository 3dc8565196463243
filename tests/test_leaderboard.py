"""Gradescope's leaderboard: figures from the hidden tests that passed, and the two-moons floor.

A small suite of our own runs in the real harness against the reference in a real bwrap
worker, to show what reaches the supervisor: a passed test's finite figures (the last under a
name), none from a test that failed, and a worker handle refused as a value. The reference's
own entries, from a whole grading, are checked in ``test_batch.py`` (its shared grading).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from autograder.config import Assignment
from autograder.grading.leaderboard import (
    MAX_ENTRIES,
    checked,
    from_message,
    gradescope_entries,
)
from autograder.grading.models import LeaderboardEntry, SuiteRun
from autograder.grading.models import TestOutcome as Outcome
from autograder.grading.reports import SubmissionReport, gradescope_results
from autograder.grading.rerun import merge
from autograder.grading.scoring import score
from tests.conftest import REPO

SCHEMA = json.loads((REPO / "tests" / "gradescope_results.schema.json").read_text())
HIDDEN = REPO / "tests" / "hidden" / "normalizing_flows"

SUITE = """
import math

import torch


def test_figures(leaderboard):
    leaderboard("kept", torch.tensor(0.75, dtype=torch.float64))
    leaderboard("higher is better", 3, order="desc")
    leaderboard("not finite", math.nan)
    leaderboard("kept", 0.5)  # the last figure under a name is the test's


def test_fails_after_measuring(leaderboard):
    leaderboard("from a failed test", 0.1)
    assert False, "fails after measuring"


def test_handle_as_value(leaderboard, given):
    leaderboard("from the worker", given.standard_normal(2).mean)
"""


def entry(name: str, value: float, nodeid: str = "test_train.py::t", order: str = "asc"):
    return LeaderboardEntry(name, value, order, nodeid, nodeid.split("::")[0][5:-3])


def test_checked_keeps_finite_numbers_and_refuses_the_rest() -> None:
    assert checked("nll", torch.tensor([0.25])) == ("nll", 0.25, "asc")
    assert checked(" bits ", 2, "desc") == ("bits", 2.0, "desc")
    assert checked("nll", math.inf) is None and checked("nll", torch.tensor(math.nan)) is None
    for value in (True, "0.3", [0.3], torch.zeros(2), object()):
        with pytest.raises(TypeError, match="number computed in the harness"):
            checked("nll", value)
    for name, order in (("", "asc"), ("x" * 101, "asc"), (3, "asc"), ("nll", "up")):
        with pytest.raises(ValueError):
            checked(name, 0.3, order)


def test_supervisor_reads_only_well_formed_lines_of_announced_tests() -> None:
    tests = {"test_train.py::t": ("t", "train", 1.0)}
    good = {"nodeid": "test_train.py::t", "name": "nll", "value": 0.4, "order": "asc"}
    assert from_message(good, tests) == [entry("nll", 0.4)]
    for bad in (
        {**good, "nodeid": "test_train.py::other"},
        {**good, "value": math.nan},
        {**good, "value": "0.4"},
        {**good, "order": "sideways"},
        {k: v for k, v in good.items() if k != "name"},
    ):
        assert from_message(bad, tests) == [], bad


def test_gradescope_entries_one_per_name_in_first_order() -> None:
    entries = [
        entry("a", 1.0),
        entry("b", 2.0, order="desc"),
        entry("a", 0.5),
        entry("c", math.nan),
    ]
    assert gradescope_entries(entries) == [
        {"name": "a", "value": 0.5, "order": "asc"},
        {"name": "b", "value": 2.0, "order": "desc"},
    ]
    many = [entry(f"n{i}", float(i)) for i in range(MAX_ENTRIES + 5)]
    assert len(gradescope_entries(many)) == MAX_ENTRIES


def test_results_json_carries_the_leaderboard(assignment: Assignment) -> None:
    outcome = Outcome("test_train.py::t", "trains", "train", 1.0, "passed")
    run = SuiteRun(tests=[outcome], leaderboard=[entry("nll", 0.41), entry("floor", 0.29)])
    report = SubmissionReport("alice", score(assignment, run), leaderboard=run.leaderboard)
    results = gradescope_results(assignment, report)
    jsonschema.validate(results, SCHEMA)
    assert results["leaderboard"] == [
        {"name": "nll", "value": 0.41, "order": "asc"},
        {"name": "floor", "value": 0.29, "order": "asc"},
    ]
    empty = SubmissionReport("bob", score(assignment, SuiteRun(tests=[outcome])))
    assert "leaderboard" not in gradescope_results(assignment, empty)


def test_a_rerun_replaces_the_figures_of_the_tests_it_reran() -> None:
    kept, rerun = "test_train.py::kept", "test_train.py::rerun"
    first = SuiteRun(
        tests=[
            Outcome(kept, "kept", "train", 1.0, "passed"),
            Outcome(rerun, "rerun", "train", 1.0, "timeout", "timed out after 90 s"),
        ],
        leaderboard=[entry("a", 1.0, kept)],
    )
    again = SuiteRun(
        tests=[Outcome(rerun, "rerun", "train", 1.0, "passed")],
        leaderboard=[entry("b", 2.0, rerun)],
    )
    assert merge(first, again).leaderboard == [entry("a", 1.0, kept), entry("b", 2.0, rerun)]


def test_harness_sends_only_passed_tests_finite_figures(
    assignment: Assignment, tmp_path: Path
) -> None:
    from autograder.grading.supervisor import Supervisor
    from autograder.grading.unpack import collect_submission
    from autograder.grading.workspace import prepare_workspace, student_file_names

    suites = tmp_path / "suites"
    suites.mkdir()
    shutil.copy(HIDDEN / "conftest.py", suites / "conftest.py")  # the real fixture
    (suites / "test_train.py").write_text(SUITE)
    files = collect_submission(assignment.solution_dir, student_file_names(assignment))
    workspace = prepare_workspace(assignment, files, tmp_path / "workspace")
    with Supervisor(assignment, tests_dir=suites, sandbox_name="bwrap") as supervisor:
        run = supervisor.run(workspace)
    status = {t.nodeid.split("::")[1]: (t.status, t.message) for t in run.tests}
    assert status["test_figures"][0] == "passed", status
    assert status["test_fails_after_measuring"][0] == "failed", status
    handle = status["test_handle_as_value"]
    assert handle[0] == "error" and "number computed in the harness" in handle[1], status
    figures = "test_train.py::test_figures"
    assert run.leaderboard == [
        LeaderboardEntry("kept", 0.5, "asc", figures, "train"),
        LeaderboardEntry("higher is better", 3.0, "desc", figures, "train"),
    ]


def test_floor_is_the_true_density_of_the_secret_task() -> None:
    """The floor's density integrates to 1 on the test's mass grid, agrees with a fine midpoint
    rule, and sits below a good model's NLL: the empirical NLL of a large sample is the
    entropy, 0.2892 nats (benchmarks/README.md), on any secret task's moons scale."""
    sys.path.insert(0, str(HIDDEN))
    try:
        import moons_floor
        from secret_task import Task
    finally:
        sys.path.remove(str(HIDDEN))
    for secret in (0, 1, 2):
        task = Task.draw(secret)
        assert abs(moons_floor.mass(task) - 1) < 0.01, secret
        big = task.sample(20_000, 7)
        assert moons_floor.floor(task, big) == pytest.approx(0.2892, abs=0.02), secret
    x = Task.draw(0).pull_back(Task.draw(0).sample(500, 100))
    t = math.pi * (torch.arange(32768, dtype=torch.float64) + 0.5) / 32768
    arcs = [torch.stack([torch.cos(t), torch.sin(t)], -1)]
    arcs.append(torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1))
    kernel = [torch.exp(-torch.cdist(x, a).square() / (2 * 0.05**2)).mean(-1) for a in arcs]
    midpoint = ((kernel[0] + kernel[1]) / 2 / (2 * math.pi * 0.05**2)).log()
    assert float((moons_floor.log_density(x) - midpoint).abs().max()) < 1e-5
