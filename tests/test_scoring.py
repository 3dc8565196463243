"""Scoring: part points split by weight, skipped tests free, unrun parts not graded."""

from __future__ import annotations

import pytest

from autograder.config import Assignment
from autograder.grading import models
from autograder.grading.models import SuiteRun
from autograder.grading.scoring import NOTEBOOK_PART, score


def outcome(
    part: str, status: str = "passed", weight: float = 1.0, name: str = "t"
) -> models.TestOutcome:
    return models.TestOutcome(f"test_{part}.py::{name}", name, part, weight, status)  # type: ignore[arg-type]


def all_parts(assignment: Assignment, status: str = "passed") -> list[models.TestOutcome]:
    return [outcome(part, status) for part in assignment.parts]


def test_all_passed_is_full_marks(assignment: Assignment) -> None:
    result = score(assignment, SuiteRun(tests=all_parts(assignment)))
    assert result.total == result.max_total == sum(assignment.parts.values())
    assert all(p.graded for p in result.parts.values() if p.part != NOTEBOOK_PART)


@pytest.mark.parametrize("status", ["failed", "error", "timeout", "crashed"])
def test_anything_but_passed_earns_nothing(assignment: Assignment, status: str) -> None:
    result = score(assignment, SuiteRun(tests=all_parts(assignment, status)))
    assert result.total == 0
    assert result.max_total == sum(assignment.parts.values())


def test_points_split_by_weight(assignment: Assignment) -> None:
    points = assignment.parts["coupling"]
    tests = [
        outcome("coupling", "passed", weight=3, name="heavy"),
        outcome("coupling", "failed", weight=1, name="light"),
    ]
    part = score(assignment, SuiteRun(tests=tests)).parts["coupling"]
    assert part.earned == pytest.approx(points * 3 / 4)
    assert [t.max_points for t in part.tests] == pytest.approx([points * 3 / 4, points / 4])


def test_skipped_tests_cost_nothing(assignment: Assignment) -> None:
    # The GPU variant of a training test on a CPU host.
    tests = [outcome("train", "passed", name="cpu"), outcome("train", "skipped", name="gpu")]
    part = score(assignment, SuiteRun(tests=tests)).parts["train"]
    assert part.earned == part.max_points == assignment.parts["train"]
    assert [t.max_points for t in part.skipped] == [0.0]


def test_unrequested_part_is_not_graded(assignment: Assignment) -> None:
    result = score(assignment, SuiteRun(tests=[outcome("maf")]), parts=["maf"])
    assert result.parts["maf"].graded and not result.parts["coupling"].graded
    assert result.total == result.max_total == assignment.parts["maf"]


def test_requested_part_without_outcomes_scores_zero(assignment: Assignment) -> None:
    # A suite that died before reporting must not shrink the maximum.
    result = score(assignment, SuiteRun(tests=[outcome("maf")]))
    assert result.parts["coupling"].graded
    assert result.parts["coupling"].earned == 0
    assert result.max_total == sum(assignment.parts.values())


def test_notebook_scores_against_its_points(assignment: Assignment) -> None:
    assert assignment.notebook is not None
    tests = [*all_parts(assignment), outcome(NOTEBOOK_PART), outcome(NOTEBOOK_PART, "failed")]
    result = score(assignment, SuiteRun(tests=tests))
    assert result.parts[NOTEBOOK_PART].earned == pytest.approx(assignment.notebook.points / 2)
    assert result.max_total == pytest.approx(assignment.total_points)


def test_notebook_not_graded_without_its_outcomes(assignment: Assignment) -> None:
    assert not score(assignment, SuiteRun(tests=all_parts(assignment))).parts[NOTEBOOK_PART].graded


def test_unknown_part_is_an_error(assignment: Assignment) -> None:
    with pytest.raises(ValueError, match="unknown part"):
        score(assignment, SuiteRun(tests=[outcome("nonsense")]))
