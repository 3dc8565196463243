"""``autograder mutants``: how many generated bugs the hidden suites catch, part by part.

Every mutant from :mod:`autograder.mutation` becomes a submission folder (the reference's student
files, one of them mutated) and is graded by the real grader (:func:`grade_batch`, no gradebook,
no notebook, into a temporary folder). The reference is graded first; a mutant is *killed* when
its own part earns less than the reference's. A survivor is then graded on every part, to tell a
bug that another part's suite catches ("killed elsewhere") from one nothing catches. Mutants on
the reviewed list of equivalent ones (``equivalent_mutants.yml``: they behave exactly like the
reference) are left out of the rate.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from autograder.config import PACKAGE, Assignment, Course
from autograder.errors import AutograderError
from autograder.mutation import Mutant, mutants_of_file

EQUIVALENT = "equivalent_mutants.yml"
REFERENCE = "reference"
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Outcome:
    """What grading one mutant showed."""

    mutant: Mutant
    killed: bool  # its own part lost points
    killed_elsewhere: bool = False  # survived its part, but another part lost points


def generate(assignment: Assignment, parts: list[str] | None = None) -> list[Mutant]:
    """Every mutant of the asked parts' reference files (all parts when ``parts`` is None)."""
    unknown = sorted(set(parts or []) - set(assignment.parts))
    if unknown:
        known = ", ".join(assignment.parts)
        raise AutograderError(f"unknown part {unknown[0]!r} for {assignment.name} (known: {known})")
    chosen = [p for p in assignment.parts if not parts or p in parts]
    return [
        m for p in chosen for m in mutants_of_file(assignment.solution_dir / PACKAGE / f"{p}.py")
    ]


def load_equivalent(assignment: Assignment) -> dict[str, str]:
    """``id -> reason`` from the reviewed list (empty when there is none)."""
    path = assignment.examples_dir / EQUIVALENT
    if not path.is_file():
        return {}
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise AutograderError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(entries, list):
        raise AutograderError(f"{path}: expected a list of mutants, got {type(entries).__name__}")
    equivalent: dict[str, str] = {}
    for index, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not {"id", "diff", "reason"} <= set(entry):
            raise AutograderError(f"{path}: entry {index}: needs the keys id, diff and reason")
        if not str(entry["reason"]).strip():
            raise AutograderError(f"{path}: entry {index} ({entry['id']}): the reason is empty")
        equivalent[str(entry["id"])] = str(entry["reason"])
    return equivalent


def sample(mutants: list[Mutant], k: int | None, seed: int) -> list[Mutant]:
    """``k`` of ``mutants`` chosen with ``random.Random(seed)``, in their original order."""
    if k is None or k >= len(mutants):
        return mutants
    if k < 1:
        raise AutograderError(f"--sample must be at least 1, got {k}")
    chosen = set(random.Random(seed).sample(range(len(mutants)), k))
    return [m for i, m in enumerate(mutants) if i in chosen]


def run_mutants(
    course: Course, assignment: Assignment, mutants: list[Mutant], *, jobs: int = 1
) -> list[Outcome]:
    """Grade the reference and every mutant through the real grader; the outcome of each."""
    from autograder.grading.batch import Extensions, grade_batch

    def grade(folders: list[Path], out: Path, parts: list[str] | None) -> dict[str, dict]:
        # The batch's summary table is for ``autograder grade``; here it would drown the report.
        with open(out.parent / f"{out.name}.log", "w") as log, contextlib.redirect_stdout(log):
            graded = grade_batch(
                course, assignment, folders, out, jobs=jobs, parts=parts,
                extensions=Extensions(), progress=False,
            )  # fmt: skip
        failed = [g for g in graded if g.report.error]
        if failed:
            raise AutograderError(
                f"the grader failed on {failed[0].name}: {failed[0].report.error} "
                "(nothing about mutants can be concluded)"
            )
        return {g.name: {p: s.earned for p, s in g.score.parts.items()} for g in graded}

    with tempfile.TemporaryDirectory(prefix="autograder-mutants-") as scratch:
        root = Path(scratch)
        reference = _submission(assignment, root / REFERENCE, None)
        # The reference on the mutants' own parts now, on the others only if a survivor needs
        # them (a --part run of a quick part then never waits for the parts that train).
        asked = list(dict.fromkeys(m.part for m in mutants)) or None
        first = grade([reference], root / "out-reference", asked)[REFERENCE]
        expected = {p: first[p] for p in asked or assignment.parts}
        folders = {m.id: _submission(assignment, root / m.id, m) for m in mutants}
        earned: dict[str, dict[str, float]] = {}
        for part in dict.fromkeys(m.part for m in mutants):
            batch = [folders[m.id] for m in mutants if m.part == part]
            earned.update(grade(batch, root / f"out-{part}", [part]))
        outcomes = [
            Outcome(m, earned[m.id][m.part] < expected[m.part] - _TOLERANCE) for m in mutants
        ]
        survivors = [o.mutant for o in outcomes if not o.killed]
        if survivors:
            rest = [p for p in assignment.parts if p not in expected]
            if rest:
                later = grade([reference], root / "out-reference-rest", rest)[REFERENCE]
                expected.update({p: later[p] for p in rest})
            elsewhere = grade([folders[m.id] for m in survivors], root / "out-survivors", None)
            lost = {
                m.id: any(elsewhere[m.id][p] < expected[p] - _TOLERANCE for p in assignment.parts)
                for m in survivors
            }
            outcomes = [
                o if o.killed else Outcome(o.mutant, False, lost[o.mutant.id]) for o in outcomes
            ]
    return outcomes


def _submission(assignment: Assignment, dest: Path, mutant: Mutant | None) -> Path:
    """``dest/flows/<student files>``: the reference's, with ``mutant``'s file mutated."""
    package = dest / PACKAGE
    package.mkdir(parents=True)
    for part in assignment.parts:
        source = assignment.solution_dir / PACKAGE / f"{part}.py"
        if mutant is not None and mutant.part == part:
            (package / source.name).write_bytes(mutant.text.encode("utf-8"))
        else:
            shutil.copyfile(source, package / source.name)
    return dest


def report(
    assignment: Assignment, outcomes: list[Outcome], equivalent: list[Mutant]
) -> tuple[str, dict[str, float]]:
    """The printed report, and the kill rate of each part that has mutants."""
    lines = [f"{'part':<20} {'mutants':>7} {'killed':>6} {'elsewhere':>9} {'survived':>8}  rate"]
    rates: dict[str, float] = {}
    for part in assignment.parts:
        mine = [o for o in outcomes if o.mutant.part == part]
        if not mine:
            continue
        killed = sum(o.killed for o in mine)
        elsewhere = sum(o.killed_elsewhere for o in mine)
        rates[part] = killed / len(mine)
        lines.append(
            f"{part:<20} {len(mine):>7} {killed:>6} {elsewhere:>9} "
            f"{len(mine) - killed - elsewhere:>8}  {rates[part]:.1%}"
        )
    total = len(outcomes)
    killed = sum(o.killed for o in outcomes)
    lines.append(f"{'all':<20} {total:>7} {killed:>6}{'':>29}{killed / max(total, 1):.1%}")
    lines.append(f"equivalent (reviewed, not counted): {len(equivalent)}")
    survivors = [o for o in outcomes if not o.killed]
    if survivors:
        lines.append("survivors (id  operator  file:line  old -> new):")
        for o in survivors:
            where = "  [killed elsewhere]" if o.killed_elsewhere else ""
            lines.append(f"  {o.mutant.id}  {o.mutant.operator}  {o.mutant.diff}{where}")
    return "\n".join(lines), rates


def run_command(
    course: Course,
    assignment: Assignment,
    *,
    parts: list[str] | None = None,
    k: int | None = None,
    seed: int = 0,
    jobs: int = 1,
    min_kill_rate: float | None = None,
) -> int:
    """``autograder mutants``: generate, sample, grade, print; 1 when a part is under the bar."""
    mutants = generate(assignment, parts)
    reviewed = load_equivalent(assignment)
    equivalent = [m for m in mutants if m.id in reviewed]
    chosen = sample([m for m in mutants if m.id not in reviewed], k, seed)
    print(
        f"{assignment.name}: {len(mutants)} mutants ({len(equivalent)} reviewed as equivalent); "
        f"grading {len(chosen)} with {jobs} job(s)",
        flush=True,
    )
    outcomes = run_mutants(course, assignment, chosen, jobs=jobs)
    text, rates = report(assignment, outcomes, equivalent)
    print(text)
    low = {p: r for p, r in rates.items() if min_kill_rate is not None and r < min_kill_rate}
    if low:
        print(f"under --min-kill-rate {min_kill_rate:.0%}: {', '.join(sorted(low))}")
        return 1
    return 0
