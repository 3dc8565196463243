"""The batch's extension points, as types: what a stage sees, what a sink gets, what they are.

Their own module so that the extensions (the notebook stage, the gradebook sink) and the batch
that runs them import these types from here, never from each other: no import circle between
:mod:`autograder.grading.batch`, :mod:`autograder.grading.notebook_stage` and
:mod:`autograder.gradebook`.

- *extra stages*: ``stage(ctx: StageContext) -> list[TestOutcome]``, called after the hidden
  suites while the prepared workspace exists;
- *sinks*: ``sink(graded: GradedSubmission) -> None``, called after a submission's reports are
  written, for resumed submissions too (so a sink must be idempotent);
- *fingerprints*: ``fingerprint(submission: Path) -> bytes``, mixed into the content key, for
  whatever a stage reads from the submission beyond the student files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autograder.config import Assignment, Course
from autograder.grading.models import SuiteRun, TestOutcome
from autograder.grading.reports import SubmissionReport, grades_row
from autograder.grading.sandbox import Backend
from autograder.grading.sandbox.unsandboxed import NoSandbox
from autograder.grading.scoring import Score
from autograder.grading.unpack import StudentFiles


@dataclass(frozen=True)
class StageContext:
    """What an extra stage may look at for one submission."""

    course: Course
    assignment: Assignment
    name: str
    submission: Path  # the folder or zip as given
    workspace: Path  # the prepared workspace (given files + student files); removed after
    files: StudentFiles
    parts: list[str] | None  # the parts asked for (None: all)
    # The OS sandbox backend every piece of student code runs under (chosen once per batch).
    backend: Backend = field(default_factory=NoSandbox)
    flags: list[str] = field(default_factory=list)  # a stage's flags, added to the submission's


@dataclass
class GradedSubmission:
    """One submission's grade, as the sinks and the caller see it."""

    name: str
    submission: Path
    out_dir: Path
    key: str | None  # None when it could not be graded (it is retried on the next run)
    run: SuiteRun
    report: SubmissionReport
    resumed: bool = False
    parts: list[str] | None = None  # the parts graded (None: all)
    content: str | None = None  # digest of the student files alone

    @property
    def score(self) -> Score:
        return self.report.score

    @property
    def row(self) -> dict[str, Any]:
        # The raw submission beside its (sanitised) output name, to map names back.
        return {**grades_row(self.report, self.key), "submission": str(self.submission)}


ExtraStage = Callable[[StageContext], list[TestOutcome]]
Sink = Callable[[GradedSubmission], None]
Fingerprint = Callable[[Path], bytes]


@dataclass
class Extensions:
    """The extra stages and sinks a batch runs (see the module's docstring)."""

    stages: list[ExtraStage] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    # What else a stage reads from a submission (e.g. its notebook) must be in the content key,
    # or a changed notebook alone would be resumed instead of graded: ``fingerprint(path)``.
    fingerprints: list[Fingerprint] = field(default_factory=list)
