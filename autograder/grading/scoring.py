"""Turn test outcomes into points: the ``scoring`` stage.

A part ``p`` is worth ``P_p`` points (``course.yml``; the notebook part is worth
``notebook.points``). Its points are split among the tests that ran by their weights:

    points(t) = P_p * w_t / sum_{s in ran(p)} w_s,      earned(p) = sum_{t passed} points(t)

where ``ran(p)`` leaves out ``skipped`` tests (e.g. the GPU variant on a CPU host), so a test
the host could not run costs the student nothing. A part that was not asked for (``--part``)
and has no outcome is *not graded*: it is left out of both the total and the maximum instead
of counting as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autograder.config import Assignment
from autograder.grading.models import SuiteRun, TestOutcome

NOTEBOOK_PART = "notebook"


@dataclass(frozen=True)
class ScoredTest:
    """One outcome with the points it is worth and the points it earned."""

    outcome: TestOutcome
    points: float
    max_points: float


@dataclass(frozen=True)
class PartScore:
    """Points of one part; ``graded`` is False when it was not run at all."""

    part: str
    earned: float
    max_points: float
    graded: bool
    tests: list[ScoredTest] = field(default_factory=list)

    @property
    def passed(self) -> list[ScoredTest]:
        return [t for t in self.tests if t.outcome.passed]

    @property
    def failed(self) -> list[ScoredTest]:
        return [t for t in self.tests if t.outcome.status not in ("passed", "skipped")]

    @property
    def skipped(self) -> list[ScoredTest]:
        return [t for t in self.tests if t.outcome.status == "skipped"]


@dataclass(frozen=True)
class Score:
    """Points per part, in ``course.yml`` order (the notebook last)."""

    parts: dict[str, PartScore]

    @property
    def total(self) -> float:
        return sum(p.earned for p in self.parts.values() if p.graded)

    @property
    def max_total(self) -> float:
        return sum(p.max_points for p in self.parts.values() if p.graded)

    @property
    def tests(self) -> list[ScoredTest]:
        return [t for p in self.parts.values() for t in p.tests]


def part_points(assignment: Assignment) -> dict[str, float]:
    """Points per part, the notebook included when the assignment has one."""
    points = dict(assignment.parts)
    if assignment.notebook is not None:
        points[NOTEBOOK_PART] = assignment.notebook.points
    return points


def score(assignment: Assignment, run: SuiteRun, *, parts: list[str] | None = None) -> Score:
    """Score ``run`` against the part points of ``assignment``.

    ``parts`` are the parts that were asked for (``None``: every module part, plus the notebook
    when its stage reported outcomes); the others are not graded. A part asked for whose tests
    all were skipped or never reported earns 0 of its points, so a suite that died before
    reporting cannot make a part vanish from the maximum.
    """
    points = part_points(assignment)
    unknown = sorted({t.part for t in run.tests} - set(points))
    if unknown:
        # A test module whose stem is not a course part would silently score nothing.
        raise ValueError(f"test outcomes for unknown part(s) {unknown}; known: {sorted(points)}")
    by_part: dict[str, list[TestOutcome]] = {p: [] for p in points}
    for outcome in run.tests:
        by_part[outcome.part].append(outcome)
    if parts is not None:
        asked = set(parts)
    else:
        asked = set(assignment.parts) | ({NOTEBOOK_PART} if by_part.get(NOTEBOOK_PART) else set())
    return Score(
        parts={
            part: _score_part(part, total, by_part[part], graded=part in asked)
            for part, total in points.items()
        }
    )


def _score_part(part: str, total: float, outcomes: list[TestOutcome], *, graded: bool) -> PartScore:
    if not graded:
        return PartScore(part, 0.0, total, graded=False)
    weight = sum(o.weight for o in outcomes if o.status != "skipped")
    scored = [
        ScoredTest(
            o,
            points=_share(total, o.weight, weight) if o.passed else 0.0,
            max_points=0.0 if o.status == "skipped" else _share(total, o.weight, weight),
        )
        for o in outcomes
    ]
    # Rounded so that passing every test gives exactly the part's points, not 24.999999.
    earned = round(sum(t.points for t in scored), 6)
    return PartScore(part, earned, total, graded=True, tests=scored)


def _share(total: float, weight: float, weights: float) -> float:
    return total * weight / weights if weights > 0 else 0.0
