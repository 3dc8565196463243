"""Grade many submissions: the pipeline per submission, a thread pool, resume after a crash.

Per submission, small named stages run in order::

    unpack -> key (resume?) -> workspace -> supervise -> extra stages -> score -> plots -> reports
           -> grading.json -> grades.csv -> sinks

then, once every job has finished, the tests that timed out are rerun alone (:mod:`.rerun`).
``<name>`` is the submission's safe output name (:mod:`.names`); its outputs go to
``out/<name>/``. The sandbox backend is chosen once and handed to every stage.

**Resume** (:mod:`.resume`). ``out/<name>/grading.json`` (written last, with the content key
and the :class:`SuiteRun`) says the submission is done: a re-run with the same key reuses it, so a
killed or interrupted batch resumes where it stopped and an unchanged one is free.

**Failure.** A submission that cannot be unpacked, whose grading hits a grader bug, or whose
results cannot be written still gets (where it can be written) a complete ``results.json``:
every part at 0, the reason in ``output`` and in the flags; the batch goes on.

**Extension points** (:mod:`.extensions`: extra stages, sinks, fingerprints) are filled by
:func:`default_extensions` (the notebook and the gradebook) or passed to :func:`grade_batch`.
A stage or sink that raises costs that submission its outcomes, never the batch.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.grading import atomic
from autograder.grading.defaults import default_extensions
from autograder.grading.extensions import (
    Extensions,
    ExtraStage,
    Fingerprint,
    GradedSubmission,
    Sink,
    StageContext,
)
from autograder.grading.models import SuiteRun, TestOutcome
from autograder.grading.names import output_names, reserved_names
from autograder.grading.names import raw_name as submission_name
from autograder.grading.plots import draw_pictures
from autograder.grading.reports import (
    GRADES_CSV,
    RESULTS,
    SubmissionReport,
    format_table,
    write_grades_csv,
    write_reports,
)
from autograder.grading.rerun import rerun_alone
from autograder.grading.resume import GRADING, content_digest, course_digest, read_grading
from autograder.grading.sandbox import Backend
from autograder.grading.sandbox import choose as choose_sandbox
from autograder.grading.sandbox.unsandboxed import NoSandbox
from autograder.grading.scoring import part_points, score
from autograder.grading.supervisor import OnDemandSupervisor, Supervisor
from autograder.grading.unpack import StudentFiles, SubmissionError, collect_submission
from autograder.grading.workspace import prepare_workspace, student_file_names

__all__ = [  # the extension types live in extensions.py; still importable from here
    "Extensions",
    "ExtraStage",
    "Fingerprint",
    "GradedSubmission",
    "Sink",
    "StageContext",
    "default_extensions",
    "grade_batch",
    "submission_name",
]

PLOTS = "plots"


def grade_batch(
    course: Course,
    assignment: Assignment,
    submissions: list[Path],
    out: Path,
    *,
    jobs: int = 1,
    db_url: str | None = None,
    parts: list[str] | None = None,
    extensions: Extensions | None = None,
    progress: bool = True,
    sandbox: str | Backend = "auto",
) -> list[GradedSubmission]:
    """Grade ``submissions`` into ``out`` (``jobs`` at a time); prints a summary table.

    Returns the graded submissions in the order given. Raises :class:`AutograderError` for two
    submissions with the same name, an unknown part, or ``jobs < 1``.
    """
    if jobs < 1:
        raise AutograderError(f"--jobs must be at least 1, got {jobs}")
    unknown = sorted(set(parts or []) - set(part_points(assignment)))
    if unknown:
        known = ", ".join(part_points(assignment))
        raise AutograderError(f"unknown part {unknown[0]!r} for {assignment.name} (known: {known})")
    names = output_names(submissions, reserved_names(db_url))
    if extensions is None:
        extensions = default_extensions(course, assignment, db_url)
    grader = _BatchGrader(course, assignment, out, parts, extensions)
    # No OS sandbox here: refuse before anything is graded (or printed, or created). One
    # backend object, chosen once, for every stage that runs student code.
    backend = sandbox if isinstance(sandbox, Backend) else choose_sandbox(sandbox)
    grader.backend = backend
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, GradedSubmission] = {}
    bar = tqdm(total=len(names), desc="grading", unit="sub", file=sys.stderr, disable=not progress)
    with (
        OnDemandSupervisor(lambda: Supervisor(assignment, backend=backend)) as supervisor,
        bar,
    ):
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [
                pool.submit(grader.grade, name, path, supervisor) for name, path in names.items()
            ]
            for future in as_completed(futures):
                graded = future.result()
                results[graded.name] = graded
                bar.set_postfix_str(f"{graded.name}: {graded.score.total:.1f}")
                bar.update()
        except BaseException:
            # Interrupted (Ctrl-C) or a sink failed: whatever is still running is killed with the
            # supervisor and must not be stored as graded, or a resume would trust it.
            grader.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        # A test that timed out beside other jobs is run again with no other job running.
        for name in names:
            results[name] = grader.rerun(results[name], supervisor)
    ordered = [results[name] for name in names]
    print(format_table(assignment, [g.row for g in ordered], resumed=_resumed(ordered)))
    return ordered


def _resumed(graded: list[GradedSubmission]) -> set[str]:
    return {g.name for g in graded if g.resumed}


class _BatchGrader:
    """The per-submission pipeline; ``grade`` is called from several threads at once."""

    def __init__(
        self,
        course: Course,
        assignment: Assignment,
        out: Path,
        parts: list[str] | None,
        extensions: Extensions,
    ) -> None:
        self.course, self.assignment, self.out = course, assignment, out
        self.parts, self.extensions = parts, extensions
        self.backend: Backend = NoSandbox()  # set by grade_batch
        self.course_digest = course_digest(assignment, parts)
        self._csv_lock = threading.Lock()
        # grades.csv covers every submission graded into ``out`` (earlier runs included). Their
        # rows are read once, on the first store, not again per submission: a grading.json holds
        # the artifacts too, and re-reading them all after each of N submissions is O(N^2).
        self._rows: dict[str, dict[str, Any]] | None = None
        self.stopping = threading.Event()  # set when the batch is abandoned midway

    def grade(
        self, name: str, submission: Path, supervisor: OnDemandSupervisor
    ) -> GradedSubmission:
        dest = self.out / name
        started = time.monotonic()
        try:
            files = collect_submission(submission, student_file_names(self.assignment))
        except SubmissionError as exc:
            graded = self._failed(name, submission, dest, str(exc), "unreadable submission")
        else:
            extra = [fingerprint(submission) for fingerprint in self.extensions.fingerprints]
            content = content_digest(files, extra)
            key = hashlib.sha256(f"{self.course_digest}:{content}".encode()).hexdigest()
            graded = self._resume(name, submission, dest, key)
            if graded is None:
                try:
                    graded = self._grade_files(name, submission, dest, key, files, supervisor)
                    graded = self._merge_previous(graded, content)
                except Exception as exc:  # a grader bug must not stop the other submissions
                    tqdm.write(f"autograder: grading {name} failed:\n{traceback.format_exc()}")
                    graded = self._failed(name, submission, dest, repr(exc), "grader error")
        if self.stopping.is_set():
            raise _Abandoned(name)
        if not graded.resumed:
            graded.report = replace(graded.report, wall_time_s=time.monotonic() - started)
        return self._finish(graded)

    def rerun(self, graded: GradedSubmission, supervisor: OnDemandSupervisor) -> GradedSubmission:
        """Its tests that timed out, once more and alone (:mod:`.rerun`); stored again."""
        try:
            run = rerun_alone(self.assignment, graded.submission, graded.run, supervisor)
        except Exception:  # the first outcomes stand
            tqdm.write(f"autograder: rerunning {graded.name} failed:\n{traceback.format_exc()}")
            return graded
        if run is None:
            return graded
        marks = score(self.assignment, run, parts=graded.parts)
        report = replace(graded.report, score=marks, flags=list(run.flags))
        return self._finish(replace(graded, run=run, report=report, resumed=False))

    def _finish(self, graded: GradedSubmission) -> GradedSubmission:
        """Store it (unless resumed), then the sinks; a failure is this submission's alone."""
        if not graded.resumed:
            graded = self._store_or_fail(graded)
        for sink in self.extensions.sinks:
            try:
                sink(graded)
            except Exception as exc:  # e.g. the gradebook: this submission's failure, retried
                flag = f"grader error: {getattr(sink, '__name__', type(sink).__name__)}: {exc!r}"
                tqdm.write(f"autograder: {graded.name}: {flag}")
                graded.run.flags.append(flag)
                report = replace(graded.report, flags=[*graded.report.flags, flag])
                graded = self._store_or_fail(replace(graded, report=report, key=None))
        return graded

    def _store_or_fail(self, graded: GradedSubmission) -> GradedSubmission:
        """Store ``graded``; a write that fails (a full disk, say) fails this submission only."""
        try:
            self._store(graded)
            return graded
        except Exception as exc:
            tqdm.write(f"autograder: writing {graded.name} failed:\n{traceback.format_exc()}")
            error = f"could not write the results: {exc!r}"
            failed = self._failed(
                graded.name, graded.submission, graded.out_dir, error, "grader error"
            )
            try:
                self._store(failed)
            except Exception:  # its folder is unwritable: at least its row in grades.csv
                self._add_row(failed)
            return failed

    # --- stages ------------------------------------------------------------------------------

    def _resume(self, name: str, submission: Path, dest: Path, key: str) -> GradedSubmission | None:
        stored = read_grading(dest)
        if stored is None or stored.get("key") != key or not (dest / RESULTS).is_file():
            return None
        run = SuiteRun.from_json(stored["run"])
        report = SubmissionReport(
            name=name,
            score=score(self.assignment, run, parts=stored.get("parts")),
            flags=run.flags,
            wall_time_s=float(stored.get("wall_time_s", 0.0)),
        )
        return GradedSubmission(
            name,
            submission,
            dest,
            key,
            run,
            report,
            resumed=True,
            parts=stored.get("parts"),
            content=stored.get("content"),
        )

    def _grade_files(
        self,
        name: str,
        submission: Path,
        dest: Path,
        key: str,
        files: StudentFiles,
        supervisor: OnDemandSupervisor,
    ) -> GradedSubmission:
        with tempfile.TemporaryDirectory(prefix=f"autograder-{name}-") as scratch:
            workspace = prepare_workspace(self.assignment, files, Path(scratch))
            run = supervisor.run(workspace, parts=self.parts)
            run.flags.extend(files.flags())  # what the unpacker refused, and why
            context = StageContext(
                self.course,
                self.assignment,
                name,
                submission,
                workspace,
                files,
                self.parts,
                backend=self.backend,
            )
            for stage in self.extensions.stages:
                _run_stage(stage, context, run)
        report = SubmissionReport(
            name=name,
            score=score(self.assignment, run, parts=self.parts),
            flags=list(run.flags),
            notes=files.feedback_notes(),  # refused (and why) or missing files
            pictures=draw_pictures(run.artifacts, dest / PLOTS),
        )
        return GradedSubmission(name, submission, dest, key, run, report, parts=self.parts)

    def _merge_previous(self, graded: GradedSubmission, content: str) -> GradedSubmission:
        """After a ``--part`` re-grade, keep the other parts' stored results for the same code."""
        graded = replace(graded, content=content)
        stored = read_grading(graded.out_dir)
        if not self.parts or stored is None or stored.get("content") != content:
            return graded
        previous = SuiteRun.from_json(stored["run"])
        run = graded.run
        kept = [t for t in previous.tests if t.part not in self.parts]
        run.tests = kept + [t for t in run.tests if t.part in self.parts]
        run.flags = list(dict.fromkeys(previous.flags + run.flags))
        run.artifacts = run.artifacts or previous.artifacts
        kept_figures = [e for e in previous.leaderboard if e.part not in self.parts]
        run.leaderboard = kept_figures + run.leaderboard  # this run graded self.parts only
        before = stored.get("parts")
        parts = None if before is None else sorted({*before, *self.parts})
        report = replace(
            graded.report,
            score=score(self.assignment, run, parts=parts),
            pictures=draw_pictures(run.artifacts, graded.out_dir / PLOTS),
        )
        return replace(graded, report=report, parts=parts)

    def _failed(
        self, name: str, submission: Path, dest: Path, error: str, flag: str
    ) -> GradedSubmission:
        """Every asked part at 0 with the reason, so the results are complete anyway."""
        asked = self.parts or list(self.assignment.parts)
        run = SuiteRun(
            tests=[
                TestOutcome(
                    nodeid=f"{flag}::{part}",
                    name=f"{part}: submission graded",
                    part=part,
                    weight=1.0,
                    status="error",
                    message=error,
                )
                for part in asked
            ],
            flags=[f"{flag}: {error}"],
        )
        report = SubmissionReport(
            name=name,
            score=score(self.assignment, run, parts=self.parts),
            flags=run.flags,
            error=error,
        )
        return GradedSubmission(name, submission, dest, None, run, report)

    def _store(self, graded: GradedSubmission) -> None:
        """Reports, then ``grading.json`` (the "done" mark), then the CSV of all done ones."""
        # The leaderboard is the run's (kept with each figure's test in grading.json's run).
        report = replace(graded.report, leaderboard=graded.run.leaderboard)
        write_reports(graded.out_dir, self.assignment, report)
        graded.run.wall_time_s = graded.report.wall_time_s
        atomic.write_json(
            graded.out_dir / GRADING,
            {
                "name": graded.name,
                "submission": str(graded.submission),
                "key": graded.key,
                "parts": graded.parts,
                "content": graded.content,
                "wall_time_s": graded.report.wall_time_s,
                "row": graded.row,
                "run": graded.run.to_json(),
            },
        )
        self._add_row(graded)

    def _add_row(self, graded: GradedSubmission) -> None:
        with self._csv_lock:
            if self._rows is None:
                stored = ((d.name, read_grading(d)) for d in sorted(self.out.iterdir()))
                self._rows = {name: g["row"] for name, g in stored if g and "row" in g}
            self._rows[graded.name] = graded.row
            write_grades_csv(self.out / GRADES_CSV, self.assignment, list(self._rows.values()))


class _Abandoned(Exception):
    """A submission whose grading was cut short by the batch stopping; it is not stored."""


def _run_stage(stage: ExtraStage, context: StageContext, run: SuiteRun) -> None:
    try:
        run.tests.extend(stage(context))
    except Exception as exc:  # the stage's points are lost, not the submission's
        name = getattr(stage, "__name__", type(stage).__name__)
        run.flags.append(f"grader stage {name} failed: {exc!r}")
    run.flags.extend(f for f in context.flags if f not in run.flags)
