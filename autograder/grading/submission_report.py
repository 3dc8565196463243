"""The record every report of one submission is made from (``results.json``, the feedback)."""

from __future__ import annotations

from dataclasses import dataclass, field

from autograder.grading.models import LeaderboardEntry
from autograder.grading.plots import Pictures
from autograder.grading.scoring import Score


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
    leaderboard: list[LeaderboardEntry] = field(default_factory=list)  # passed tests' figures
