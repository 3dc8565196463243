"""Plain records passed between the grading stages; no behaviour beyond (de)serialisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# "pending": graded by hand later (a notebook's written answer): counts in the part's maximum,
# earns nothing until a grader scores it in the gradebook. "memory": the student's code ran out
# of memory (it scores 0, like "failed"); "timeout" and "memory" messages name the student
# function that was running, e.g. "timed out after 90 s in coupling.AffineCoupling.forward".
Status = Literal["passed", "failed", "error", "timeout", "memory", "crashed", "skipped", "pending"]


@dataclass
class TestOutcome:
    """The verdict on one hidden test, as the trusted side of the grader recorded it."""

    nodeid: str  # pytest node id, e.g. "test_coupling.py::test_invertible[affine]"
    name: str  # human name shown to students: the test's docstring's first line, or its id
    part: str  # stem of the student file it grades ("coupling"); from the test module's name
    weight: float  # relative weight inside its part (``@pytest.mark.weight(n)``, default 1)
    status: Status
    message: str = ""  # what was expected and what came out, in the lesson's terms; no code
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Artifact:
    """Data a hidden test hands to the trusted side for the feedback (e.g. a density grid)."""

    name: str  # e.g. "realnvp_density"
    data: dict[str, Any]  # JSON-compatible: lists of floats, shapes, loss curves


@dataclass
class LeaderboardEntry:
    """A figure for Gradescope's leaderboard, from a hidden test that passed (``leaderboard``)."""

    name: str  # the column, e.g. "two moons MAF: held-out NLL (nats)"
    value: float  # finite
    order: str  # "asc": lower ranks first; "desc": higher
    nodeid: str  # the test that measured it
    part: str


@dataclass
class SuiteRun:
    """Everything one submission's run of the hidden suites produced."""

    tests: list[TestOutcome] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # what the grader saw the code try
    artifacts: list[Artifact] = field(default_factory=list)
    leaderboard: list[LeaderboardEntry] = field(default_factory=list)
    log: str = ""  # the child's captured stdout/stderr, truncated; for staff, not students
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuiteRun:
        return cls(
            tests=[TestOutcome(**t) for t in data.get("tests", [])],
            flags=list(data.get("flags", [])),
            artifacts=[Artifact(**a) for a in data.get("artifacts", [])],
            leaderboard=[LeaderboardEntry(**e) for e in data.get("leaderboard", [])],
            log=data.get("log", ""),
            wall_time_s=data.get("wall_time_s", 0.0),
        )
