"""Adaptive cheats (issue 13) graded through the real grader and the bubblewrap sandbox.

Each cheat of :mod:`tests.adaptive_submissions` (answers from a table of recent outputs, exact
or nearest; a ``train`` that rewrites the returned flow; a hunt for the public held-out set; a
density that reads its query; parameters fitted offline; a NaN or dense MADE; an ``Affine``
correct only for d <= 2; a sampler that ignores its base; several at once) is graded in the
same run as its honest twin (the same wrong code without the mechanism), and must earn at most
what the twin earns, per part. The twin must lose points (its code is wrong), or the comparison
would say nothing. Valid variants (``made.forward``, sampling in d + 1 passes, float64 inside a
layer, random MADE degrees kept outside the ``state_dict``, a conditional ``.to()``) earn full
marks.

Everything runs in one :class:`Supervisor`, two submissions at a time, each graded on its own
parts only, under one pinned secret task (``AUTOGRADER_SECRET_SEED``).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from autograder.config import Assignment
from autograder.errors import AutograderError
from autograder.grading import sandbox
from autograder.grading.models import SuiteRun
from autograder.grading.scoring import score
from autograder.grading.supervisor import Supervisor
from tests.adaptive_submissions import CHEATS, TWINS, VALID, VARIANTS, build, prefit_blob

pytestmark = pytest.mark.slow

SECRET_SEED = "20261205"  # the secret task every train part of this module is graded on
SCORES_OUT = "ADAPTIVE_SCORES_OUT"  # where to write the per-part scores (a record, optional)

# Cheats the committed suites still pay for, with the reason (strict: a fix must remove them).
OPEN: dict[str, str] = {}


@dataclass
class Graded:
    assignment: Assignment
    runs: dict[str, SuiteRun]

    def points(self, name: str) -> dict[str, float]:
        parts = list(VARIANTS[name].parts)
        graded = score(self.assignment, self.runs[name], parts=parts)
        return {part: graded.parts[part].earned for part in parts}

    def lost(self, name: str) -> list[str]:
        return [f"{t.nodeid}: {t.message[:100]}" for t in self.runs[name].tests if not t.passed]


@pytest.fixture(scope="module")
def graded(assignment: Assignment, tmp_path_factory: pytest.TempPathFactory) -> Graded:
    try:
        sandbox.choose("bwrap")
    except AutograderError as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")
    root = tmp_path_factory.mktemp("adaptive")
    blob = prefit_blob(assignment.solution_dir, steps=500)
    dirs = {name: build(assignment.solution_dir, root / name, name, blob) for name in VARIANTS}
    with (
        pytest.MonkeyPatch.context() as patch,
        Supervisor(assignment, sandbox_name="bwrap") as supervisor,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        patch.setenv("AUTOGRADER_SECRET_SEED", SECRET_SEED)
        # The train parts first: they take longest.
        order = sorted(VARIANTS, key=lambda n: "train" not in VARIANTS[n].parts)
        futures = {
            name: pool.submit(supervisor.run, dirs[name], parts=list(VARIANTS[name].parts))
            for name in order
        }
        result = Graded(assignment, {name: f.result() for name, f in futures.items()})
    if os.environ.get(SCORES_OUT):
        record = {
            name: {
                "points": result.points(name),
                "wall_s": round(result.runs[name].wall_time_s, 1),
                "lost": [t.nodeid for t in result.runs[name].tests if not t.passed],
            }
            for name in VARIANTS
        }
        Path(os.environ[SCORES_OUT]).write_text(json.dumps(record, indent=1))
    return result


def _cases(names: list[str]) -> list[object]:
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=OPEN[n])) if n in OPEN else n
        for n in names
    ]


@pytest.mark.parametrize("name", _cases(CHEATS))
def test_cheat_earns_at_most_its_twin(graded: Graded, name: str) -> None:
    earned = graded.points(name)
    for part, twin in VARIANTS[name].twins.items():
        deserved = graded.points(twin)[part]
        assert earned[part] <= deserved + 1e-9, (
            f"{name} earns {earned[part]:.3f} in {part}, its twin {twin} {deserved:.3f}; "
            f"the twin lost {graded.lost(twin)[:6]}, the cheat {graded.lost(name)[:6]}"
        )


@pytest.mark.parametrize("twin", TWINS)
def test_twin_code_is_really_wrong(graded: Graded, twin: str) -> None:
    """Without this the comparison above could hold with nothing to hide."""
    earned = graded.points(twin)
    full = {part: float(graded.assignment.parts[part]) for part in earned}
    assert all(earned[p] < full[p] for p in earned), (twin, earned)


@pytest.mark.parametrize("name", _cases(VALID))
def test_valid_variant_earns_full_marks(graded: Graded, name: str) -> None:
    earned = graded.points(name)
    full = {part: float(graded.assignment.parts[part]) for part in earned}
    assert earned == pytest.approx(full, abs=1e-9), graded.lost(name)
    assert graded.runs[name].flags == []
