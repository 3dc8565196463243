"""Generated mutants: each operator makes the edit it names, only inside solution regions, with
stable ids; and ``autograder mutants`` grades a sample through the real grader and reports it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.config import PACKAGE, load_course
from autograder.markers import find_regions
from autograder.mutants import load_equivalent
from autograder.mutation import mutants_of_file

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = load_course(REPO).assignment("normalizing_flows")
REFERENCE_FILES = sorted((ASSIGNMENT.solution_dir / PACKAGE).glob("*.py"))

SNIPPET = '''\
import torch

GIVEN = 1 - 2  # outside any region: never mutated


def f(x, A, b, n):
    """Docstring: not code."""
    ### BEGIN SOLUTION
    y = x @ A.T + b
    z = torch.exp(-y).sum(dim=1)
    for _ in range(n):
        z = z - y.mean(-1)
    ok = n < 3
    return z, -y
    ### END SOLUTION
'''


@pytest.fixture
def snippet(tmp_path: Path) -> Path:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET, encoding="utf-8")
    return path


def _edits(path: Path) -> dict[str, set[tuple[str, str]]]:
    """``operator -> {(old line, new line)}`` of every mutant of ``path``."""
    found: dict[str, set[tuple[str, str]]] = {}
    for mutant in mutants_of_file(path):
        found.setdefault(mutant.operator, set()).add((mutant.old_line, mutant.new_line))
    return found


@pytest.mark.parametrize(
    ("operator", "old", "new"),
    [
        ("unary_minus_removed", "return z, -y", "return z, y"),
        ("unary_minus_added", "return z, -y", "return -z, -y"),
        ("arithmetic_operator", "y = x @ A.T + b", "y = (x @ A.T) - b"),
        ("swap_operands", "y = x @ A.T + b", "y = A.T @ x + b"),
        ("swap_operands", "z = z - y.mean(-1)", "z = y.mean(-1) - z"),
        ("comparison", "ok = n < 3", "ok = n <= 3"),
        ("integer_plus_one", "ok = n < 3", "ok = n < 4"),
        ("integer_minus_one", "ok = n < 3", "ok = n < 2"),
        ("range_bound_plus_one", "for _ in range(n):", "for _ in range(n + 1):"),
        ("range_bound_minus_one", "for _ in range(n):", "for _ in range(n - 1):"),
        ("drop_right_term", "y = x @ A.T + b", "y = x @ A.T"),
        ("drop_left_term", "y = x @ A.T + b", "y = b"),
        ("drop_left_term", "z = z - y.mean(-1)", "z = -y.mean(-1)"),
        ("sum_mean", "z = torch.exp(-y).sum(dim=1)", "z = torch.exp(-y).mean(dim=1)"),
        ("sum_mean", "z = z - y.mean(-1)", "z = z - y.sum(-1)"),
        ("exp_log", "z = torch.exp(-y).sum(dim=1)", "z = torch.log(-y).sum(dim=1)"),
        ("reduction_axis", "z = torch.exp(-y).sum(dim=1)", "z = torch.exp(-y).sum(dim=0)"),
        ("reduction_axis", "z = torch.exp(-y).sum(dim=1)", "z = torch.exp(-y).sum(dim=-1)"),
        ("reduction_axis", "z = z - y.mean(-1)", "z = z - y.mean(0)"),
        ("transpose_dropped", "y = x @ A.T + b", "y = x @ A + b"),
        ("detach_added", "z = z - y.mean(-1)", "z = z - y.mean(-1).detach()"),
    ],
)
def test_operator_makes_its_edit(snippet: Path, operator: str, old: str, new: str) -> None:
    assert (old, new) in _edits(snippet).get(operator, set())


def test_an_axis_is_not_also_an_off_by_one_literal(snippet: Path) -> None:
    edits = _edits(snippet)
    news = {new for pairs in edits.values() for _, new in pairs}
    assert "z = torch.exp(-y).sum(dim=2)" not in news
    assert "z = z - y.mean(-0)" not in news and "z = z - y.mean(1)" not in news


def test_only_solution_regions_change_and_the_rest_is_byte_identical(snippet: Path) -> None:
    original = SNIPPET.splitlines(keepends=True)
    (region,) = find_regions(snippet, SNIPPET)
    mutants = mutants_of_file(snippet)
    assert len(mutants) > 20
    for mutant in mutants:
        lines = mutant.text.splitlines(keepends=True)
        assert len(lines) == len(original), mutant.diff
        changed = [n for n, (a, b) in enumerate(zip(original, lines, strict=True), 1) if a != b]
        assert len(changed) == 1 and region.begin < changed[0] < region.end, mutant.diff
        assert mutant.line == changed[0]


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.stem)
def test_reference_mutants_are_valid_distinct_and_stable(path: Path) -> None:
    first, second = mutants_of_file(path), mutants_of_file(path)
    assert [m.id for m in first] == [m.id for m in second]
    assert [m.text for m in first] == [m.text for m in second]
    assert len({m.id for m in first}) == len(first)
    reference = path.read_text(encoding="utf-8")
    texts = {m.text for m in first}
    assert len(texts) == len(first) and reference not in texts
    for mutant in first:
        ast.parse(mutant.text)  # every mutant is valid Python
        assert re.fullmatch(r"[0-9a-f]{12}", mutant.id)
    # Student files (the course's selected parts and the optional parts it leaves out) have
    # solution regions; the given files have none.
    if "### BEGIN SOLUTION" in reference:
        assert first, f"{path.name} has solution regions but no mutants"
    else:
        assert path.stem not in ASSIGNMENT.parts, f"{path.name} is a part without solution regions"
        assert first == [], f"{path.name} is a given file: it has no solution regions"


def test_an_id_survives_an_edit_elsewhere_in_the_file(snippet: Path, tmp_path: Path) -> None:
    before = {m.id: m.new_line for m in mutants_of_file(snippet)}
    moved = tmp_path / "moved" / "snippet.py"
    moved.parent.mkdir()
    moved.write_text(SNIPPET.replace("import torch\n", "import torch\nimport math\n\n"), "utf-8")
    after = {m.id: m.new_line for m in mutants_of_file(moved)}
    assert after == before


def test_reviewed_equivalent_mutants_exist_and_have_reasons() -> None:
    reviewed = load_equivalent(ASSIGNMENT)
    generated = {
        m.id
        for part in ASSIGNMENT.parts
        for m in mutants_of_file(ASSIGNMENT.solution_dir / PACKAGE / f"{part}.py")
    }
    stale = sorted(set(reviewed) - generated)
    assert not stale, f"equivalent_mutants.yml lists mutants no longer generated: {stale}"
    assert all(reason.strip() for reason in reviewed.values())


@pytest.mark.slow
def test_mutants_command_grades_a_sample_and_reports_it() -> None:
    command = [sys.executable, "-m", "autograder", "mutants", "normalizing_flows"]
    # Two quick parts: the command's sampling, grading and report are the claim; the parts
    # that train (train, digits) cost 10-20 s a mutant and are measured by benchmarks/mutants.
    command += ["--part", "coupling", "--part", "maf"]
    command += ["--sample", "20", "--seed", "0", "--jobs", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"normalizing_flows: \d+ mutants \(\d+ reviewed .*\); grading 20 .*", lines[0]
    )
    table = re.compile(r"(\w+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+\.\d)%")
    rows = {m[1]: m for m in map(table.fullmatch, lines) if m}
    assert rows and set(rows) <= {"coupling", "maf"}
    assert sum(int(m[2]) for m in rows.values()) == 20
    for m in rows.values():
        mutants, killed, elsewhere, survived = (int(m[i]) for i in range(2, 6))
        assert killed + elsewhere + survived == mutants
        assert float(m[6]) == pytest.approx(100 * killed / mutants, abs=0.05)
    survivors = [line for line in lines if line.startswith("  ")]
    assert sum(int(m[5]) + int(m[4]) for m in rows.values()) == len(survivors)
    for line in survivors:
        assert re.fullmatch(r"  [0-9a-f]{12}  \w+  \w+\.py:\d+  .+ -> .+", line), line
    # The reference is graded as the baseline, never reported as a mutant (it would survive).
    assert "reference" not in done.stdout
