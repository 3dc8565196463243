"""``autograder demo``: grade the example submissions shipped in the repository.

The reference (``solutions/<a>``), the released stubs (``assignments/<a>``) and the mutants
marked ``demo: true`` in ``tests/examples/<a>/mutants.yml`` are materialized and graded like
students' work into ``grading-out/demo`` (kept, so a second run resumes instantly and the
feedback files can be opened). The demo passes when the reference earns every module point
and the stubs earn none.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from autograder.config import Assignment, Course
from autograder.errors import AutograderError
from autograder.examples import REFERENCE, STUBS, load_specs, materialize
from autograder.grading.batch import GradedSubmission, default_extensions, grade_batch
from autograder.grading.sandbox import choose

DEMO_OUT = Path("grading-out") / "demo"


def demo_examples(assignment: Assignment) -> list[str]:
    """Names of the examples the demo grades: reference, stubs, then the demo mutants."""
    mutants = [spec.name for spec in load_specs(assignment, "mutants") if spec.demo]
    return [REFERENCE, STUBS, *mutants]


def run_demo(course: Course, jobs: int = 2, out: Path | None = None) -> int:
    """Grade the examples of the course's first assignment; 0 when the verdicts are right."""
    assignment = next(iter(course.assignments.values()))
    out = course.root / DEMO_OUT if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    # The demo grades only the course's own code, so it runs without an OS sandbox where
    # there is none (macOS, a locked container), and says so; `grade` would refuse.
    try:
        sandbox = choose("auto").name
    except AutograderError as exc:
        print(f"demo: grading without an OS sandbox (only the course's own examples run): {exc}")
        sandbox = "none"
    # The demo keeps its own gradebook, away from the course's real one.
    extensions = default_extensions(course, assignment, f"sqlite:///{out / 'gradebook.db'}")
    with tempfile.TemporaryDirectory(prefix="autograder-demo-") as scratch:
        submissions = [
            materialize(assignment, name, Path(scratch) / name)
            for name in demo_examples(assignment)
        ]
        graded = grade_batch(
            course, assignment, submissions, out, jobs=jobs, extensions=extensions, sandbox=sandbox
        )
    problems = verdict_problems(assignment, {g.name: g for g in graded})
    for problem in problems:
        print(f"demo: {problem}")
    print(f"demo: {'FAILED' if problems else 'ok'}; feedback and results.json in {out}/<name>/")
    return 1 if problems else 0


def verdict_problems(assignment: Assignment, graded: dict[str, GradedSubmission]) -> list[str]:
    """What is wrong with the demo's grades: the reference must get every module point (the
    notebook is not part of the demo submissions), the stubs none."""
    problems = []
    reference = graded[REFERENCE].score.parts
    short = [p for p in assignment.parts if reference[p].earned < reference[p].max_points]
    if short:
        problems.append(f"the reference lost points in {', '.join(short)}")
    if graded[STUBS].score.total > 0:
        problems.append(f"the stubs earned {graded[STUBS].score.total:.2f} points (expected 0)")
    return problems
