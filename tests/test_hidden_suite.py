"""The hidden suites have teeth: graded by the real grader, the reference earns full marks,
every mutant of ``tests/examples/normalizing_flows/mutants.yml`` loses points in its own part,
and every *trivial* one (code that does not attempt the part) earns at most 10% of it.

Each submission goes through the grading stages themselves (unpack -> workspace -> supervisor ->
scoring), in isolated children forked from one warm server, two at a time. A mutant is graded on
its own part only: that is the claim, and it keeps the whole proof to about a minute.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autograder.config import load_course
from autograder.examples import load_specs, materialize
from autograder.grading.scoring import PartScore, score
from autograder.grading.supervisor import Supervisor
from autograder.grading.unpack import collect_submission
from autograder.grading.workspace import prepare_workspace, student_file_names

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_course(REPO).assignment("normalizing_flows")
MUTANTS = load_specs(ASSIGNMENT, "mutants")

pytestmark = pytest.mark.slow


def _grade(supervisor: Supervisor, submission: Path, scratch: Path, parts: list[str] | None):
    files = collect_submission(submission, student_file_names(ASSIGNMENT))
    workspace = prepare_workspace(ASSIGNMENT, files, scratch)
    run = supervisor.run(workspace, parts=parts)
    return run, score(ASSIGNMENT, run, parts=parts or list(ASSIGNMENT.parts))


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, tuple]:
    """``name -> (SuiteRun, Score)`` for the reference (every part) and each mutant (its part)."""
    root = tmp_path_factory.mktemp("teeth")
    jobs = [("reference", ASSIGNMENT.solution_dir, None)]
    for mutant in MUTANTS:
        jobs.append(
            (mutant.name, materialize(ASSIGNMENT, mutant.name, root / mutant.name), [mutant.part])
        )
    with Supervisor(ASSIGNMENT) as supervisor, ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(_grade, supervisor, path, root / f"{name}-scratch", parts)
            for name, path, parts in jobs
        }
        return {name: future.result() for name, future in futures.items()}


def _describe(part: PartScore) -> str:
    failed = [
        f"{t.outcome.nodeid}: {t.outcome.status} {t.outcome.message[:120]}" for t in part.failed
    ]
    return f"{part.part}: {part.earned:.2f}/{part.max_points:g}\n" + "\n".join(failed)


def test_reference_gets_full_marks(graded):
    run, result = graded["reference"]
    assert run.flags == [], f"the reference raised grader flags: {run.flags}"
    for part in result.parts.values():
        if part.part in ASSIGNMENT.parts:
            assert part.earned == pytest.approx(part.max_points), _describe(part)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_loses_points_in_its_part(graded, mutant):
    run, result = graded[mutant.name]
    part = result.parts[mutant.part]
    assert part.graded and part.max_points > 0
    assert part.earned < part.max_points, (
        f"mutant {mutant.name} ({mutant.description}) kept full marks in {mutant.part}"
    )
    # It loses through failed checks, not through the grader breaking down.
    assert all(t.outcome.status in ("passed", "failed", "error", "skipped") for t in part.tests), (
        _describe(part)
    )


TRIVIAL = [m for m in MUTANTS if m.trivial]


@pytest.mark.parametrize("mutant", TRIVIAL, ids=[m.name for m in TRIVIAL])
def test_trivial_code_earns_at_most_a_tenth(graded, mutant):
    """Code that does not attempt the part (identity layers, zero log-dets, constant outputs, a
    train that never steps) proves a bijection at best; it earns at most 10% of the part."""
    _, result = graded[mutant.name]
    part = result.parts[mutant.part]
    assert part.earned <= 0.1 * part.max_points, (
        f"trivial mutant {mutant.name} ({mutant.description}) earned "
        f"{part.earned:.2f}/{part.max_points:g} in {mutant.part}\n" + _describe(part)
    )


def test_there_are_trivial_mutants_for_every_part():
    assert {m.part for m in TRIVIAL} == set(ASSIGNMENT.parts)
