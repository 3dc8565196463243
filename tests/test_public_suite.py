"""The public self-checks, run as a student runs them: a plain ``pytest`` inside the folder.

On the reference solution every check passes; on the generated stubs every check fails with the
one line "not implemented yet: <part>.<name>" and no traceback, and a per-part summary follows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.config import Assignment

NOT_IMPLEMENTED = re.compile(r"^not implemented yet: (\w+)\.[\w.]+$")
SECTION = re.compile(r"^=+ (.+?) =+$")
TEST_HEADER = re.compile(r"^_+ (.+?) _+$")


def run_public_tests(folder: Path) -> subprocess.CompletedProcess[str]:
    """``pytest`` in ``folder``, leaving no bytecode behind in the repository."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def sections(output: str) -> dict[str, list[str]]:
    """pytest's ``===== title =====`` sections of a run's output, by title."""
    found: dict[str, list[str]] = {}
    current: list[str] = found.setdefault("", [])
    for line in output.splitlines():
        match = SECTION.match(line)
        current = found.setdefault(match.group(1), []) if match else current
        if not match:
            current.append(line)
    return found


def summary_table(output: str) -> dict[str, tuple[str, str]]:
    """``part -> (checks, points)`` from the conftest's self-check summary."""
    rows = [line.split() for line in sections(output)["self-check summary"] if line.strip()]
    return {row[0]: (row[1], row[2]) for row in rows if row[0] != "part"}


def count(output: str, outcome: str) -> int:
    match = re.search(rf"(\d+) {outcome}", output.splitlines()[-1])
    return int(match.group(1)) if match else 0


@pytest.mark.slow
def test_every_public_check_passes_on_the_reference(assignment: Assignment) -> None:
    result = run_public_tests(assignment.solution_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    passed = count(result.stdout, "passed")
    assert passed > 0 and count(result.stdout, "failed") == 0
    table = summary_table(result.stdout)
    assert set(table) == set(assignment.parts)
    for part, (checks, points) in table.items():
        done, total = checks.split("/")
        assert done == total and float(points) == assignment.parts[part], (part, checks, points)


def test_every_public_check_fails_in_one_line_on_the_stubs(assignment: Assignment) -> None:
    result = run_public_tests(assignment.release_dir)
    output = result.stdout
    assert result.returncode == 1, output[-3000:] + result.stderr
    # A check whose fixture calls unwritten code fails at setup: pytest counts it as an error.
    failed = count(output, "failed") + count(output, "error")
    assert failed > 0 and count(output, "passed") == 0
    assert "Traceback" not in output and "raise NotImplementedError" not in output

    # Each failure's report is exactly one "not implemented yet" line, nothing more.
    found = sections(output)
    reports: dict[str, list[str]] = {}
    body: list[str] = []
    for line in found.get("ERRORS", []) + found.get("FAILURES", []):
        header = TEST_HEADER.match(line)
        if header:
            body = reports.setdefault(header.group(1), [])
        elif line.strip():
            body.append(line)
    assert len(reports) == failed
    for test, body in reports.items():
        assert len(body) == 1 and NOT_IMPLEMENTED.match(body[0]), (test, body[:5])

    table = summary_table(output)
    assert set(table) == set(assignment.parts)
    for part, (checks, points) in table.items():
        assert checks.startswith("0/") and float(points) == assignment.parts[part]
    assert sum(int(checks.split("/")[1]) for checks, _ in table.values()) == failed
