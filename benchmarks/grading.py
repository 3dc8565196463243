"""Grading throughput: ``autograder grade`` per submission, its own overhead, and its peers.

Every grader run is the real command line (``python -m autograder grade ...``) in a fresh
``--out`` folder, so nothing is resumed. Figures:

- seconds per submission, end to end, for one submission and for a batch of ``BATCH`` (copies of
  the reference and of the demo mutants) with ``--jobs 1`` and ``--jobs 2``;
- the grader's overhead per submission: its ``grading.json`` wall time minus the sum of the test
  bodies' durations it recorded (median over the submissions of a run);
- peers: the hidden suite run by plain ``pytest`` (one harness process and the sandboxed worker
  it starts itself: no supervisor, no reports), and nbgrader's ``autograde`` on a notebook of
  the same checks (:mod:`nbgrader_peer`),
  both against the solution folder (the reference copies hold only the student files, as a
  submission does; the grader adds the given ones, the peers need them in place). The grader
  gets a reference copy, not the solution folder, whose notebook would add nbgrader's own stage.

A throughput figure of a grader that gets the reference wrong is meaningless, so each row says
when the reference copies did not get full marks.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import nbgrader_peer
from report import Row, median, verdict

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "normalizing_flows"
HIDDEN = REPO / "tests" / "hidden" / ASSIGNMENT
SOLUTION = REPO / "solutions" / ASSIGNMENT
BATCH = 10
OVERHEAD_TARGET_S = 0.5  # issue 5: the grader's overhead per submission beyond the test bodies
SUITE_TARGET_S = 30.0  # issue 5: the hidden suite for one submission on 2 CPU cores


@dataclass(frozen=True)
class GradeRun:
    """One ``autograder grade`` invocation: its wall time and every ``grading.json``."""

    wall_s: float
    graded: list[dict[str, Any]]

    @property
    def per_submission_s(self) -> float:
        return self.wall_s / max(len(self.graded), 1)

    @property
    def overhead_s(self) -> float:
        """Median of (the grader's wall time - the test bodies' durations) per submission."""
        return median(
            g["wall_time_s"] - sum(t["duration_s"] for t in g["run"]["tests"]) for g in self.graded
        )

    def problems(self, expected: int, points: dict[str, float]) -> str:
        """Why this run's figures are not trustworthy (empty when they are): a submission not
        graded, or a reference copy short of any module part's points."""
        if len(self.graded) != expected:
            return f"graded {len(self.graded)} of {expected} submissions"
        wrong = [
            f"{g['name']} {part} {g['row'].get(part)}/{full}"
            for g in self.graded
            if g["name"].startswith("reference")
            for part, full in points.items()
            if g["row"].get(part) != full
        ]
        return f"reference short: {', '.join(wrong[:3])}" if wrong else ""


def submissions(root: Path, count: int) -> list[Path]:
    """``count`` submission folders: reference copies and the demo mutants, alternating."""
    from autograder.config import load_course
    from autograder.examples import REFERENCE, load_specs, materialize

    assignment = load_course(REPO).assignment(ASSIGNMENT)
    mutants = [spec.name for spec in load_specs(assignment, "mutants") if spec.demo]
    names = list(islice(cycle([REFERENCE, *mutants] if mutants else [REFERENCE]), count))
    # Folder names are the submissions' names in the outputs: number them to keep them apart.
    return [materialize(assignment, n, root / f"{n}_{i:02d}") for i, n in enumerate(names)]


def grade(paths: list[Path], jobs: int) -> GradeRun:
    """Time ``autograder grade`` of ``paths`` into a fresh output folder."""
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as out:
        command = [sys.executable, "-m", "autograder", "grade", ASSIGNMENT, *map(str, paths)]
        start = time.perf_counter()
        command += ["--out", out, "--jobs", str(jobs)]
        subprocess.run(command, cwd=REPO, capture_output=True, check=False)
        wall = time.perf_counter() - start
        graded = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*/grading.json"))]
    return GradeRun(wall, graded)


def plain_pytest(submission: Path) -> tuple[float, str]:
    """``(seconds, problem)`` of the hidden suite in one plain pytest process; ``problem`` is
    pytest's last line when it did not pass, else empty."""
    command = [sys.executable, "-m", "pytest", str(HIDDEN), f"--submission={submission}"]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "-q", "-p", "no:cacheprovider", "--assert=plain"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return seconds, "" if done.returncode == 0 else f"plain pytest failed: {last}"


def _points() -> dict[str, float]:
    from autograder.config import load_course

    return dict(load_course(REPO).assignment(ASSIGNMENT).parts)


def _nan_if(problem: str, value: float) -> float:
    return math.nan if problem else value


def run(quick: bool) -> list[Row]:
    """Every grading figure; ``quick`` grades a batch of 2 and times each thing once."""
    repeats, batch = (1, 2) if quick else (3, BATCH)
    points = _points()
    with tempfile.TemporaryDirectory(prefix="bench-subs-") as tmp:
        root = Path(tmp)
        subs = submissions(root / "subs", batch)
        reference = subs[0]
        singles = [grade([reference], jobs=1) for _ in range(repeats)]
        # The peers need a whole package (given files too): the solution folder, same code.
        plain = [plain_pytest(SOLUTION) for _ in range(repeats)]
        batches = {jobs: grade(subs, jobs) for jobs in (1, 2)}
        course = root / "nbgrader"
        course.mkdir()
        nbgrader_peer.write_course(course, HIDDEN, SOLUTION, points)
        nb = [nbgrader_peer.autograde(course) for _ in range(repeats)]

    single_problem = next((p for p in (s.problems(1, points) for s in singles) if p), "")
    single = median(s.wall_s for s in singles)
    plain_s = median(s for s, _ in plain)
    plain_problem = next((p for _, p in plain if p), "")
    nb_s, nb_score = median(s for s, _ in nb), min(score for _, score in nb)
    full = sum(points.values())
    nb_problem = "" if nb_score == full else f"nbgrader gave {nb_score:g}/{full:g}"
    overhead = median(s.overhead_s for s in singles)
    rows = [
        Row(
            "grading", "1 submission, end to end (s)", single, plain_s,
            "plain pytest of the hidden suite", "s", f"< {SUITE_TARGET_S:.0f} s",
            single_problem or plain_problem
            or verdict(single < SUITE_TARGET_S, f"{single - SUITE_TARGET_S:.1f} s"),
        ),
        Row(
            "grading", "1 submission vs nbgrader autograde (same checks)", single, nb_s,
            "nbgrader autograde", "s", "", single_problem or nb_problem,
        ),
        Row(
            # One `autograder grade` call pays its start-up once (interpreter, torch, the warm
            # fork server): that is in the single submission's wall time, not per submission.
            "grading", "1 submission: wall - test bodies (start-up included)",
            _nan_if(single_problem, overhead), single, "its wall time", "s", "", single_problem,
        ),
    ]  # fmt: skip
    one, two = batches[1], batches[2]
    problem = one.problems(batch, points) or two.problems(batch, points)
    rows += [
        Row(
            "grading", f"batch of {batch}: s per submission, --jobs 2 vs --jobs 1",
            two.per_submission_s, one.per_submission_s, "--jobs 1", "s", "< peer",
            problem or verdict(two.wall_s < one.wall_s, f"{two.wall_s - one.wall_s:.1f} s"),
        ),
        Row(
            # The median over the batch: each submission's own cost once the fork server is warm.
            "grading", f"batch of {batch}: grader overhead per submission, --jobs 2 vs --jobs 1",
            two.overhead_s, one.overhead_s, "--jobs 1", "s", f"< {OVERHEAD_TARGET_S} s",
            problem or verdict(two.overhead_s < OVERHEAD_TARGET_S,
                               f"{two.overhead_s - OVERHEAD_TARGET_S:.2f} s"),
        ),
    ]  # fmt: skip
    return rows
