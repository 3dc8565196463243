"""Hostile submissions graded through the Supervisor: each earns what its code earns, with flags.

Every submission here is the reference plus code appended to one student file (the attack).
The attacked part loses what the attack broke, the other graded parts keep their points, the
grader records what it saw in ``flags``, and every run ends in bounded time.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from autograder.config import Assignment, Limits
from autograder.errors import AutograderError
from autograder.grading.models import SuiteRun
from autograder.grading.supervisor import Supervisor

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(test_timeout_s=8, submission_timeout_s=150, memory_mb=4096, max_processes=64)
# A forever-loop costs two test timeouts (then its part is forfeit): a short limit keeps that
# test cheap, and the other part it grades (composition) runs in milliseconds.
QUICK = dataclasses.replace(LIMITS, test_timeout_s=3)
LIMITS_FOR = {"loops_forever": QUICK}
T = TypeVar("T")
FAKE_RESULT = "('result', 'test_composition.py::test_forward_order', 'passed', '', 0.0)"

ATTACKS: dict[str, tuple[str, str]] = {
    # name: (student file, code appended to the reference's copy of it)
    "forges_results": (
        "composition.py",
        f"""
import gc as _gc, json as _json, os as _os, sys as _sys
_fake = _json.dumps({{"score": 100.0, "tests": []}})
for _d in (".", "..", "../..", "/tmp", {str(REPO)!r}):
    try:
        with open(_os.path.join(_d, "results.json"), "w") as _f:
            _f.write(_fake)
    except OSError:
        pass
for _fd in range(256):
    try:
        _os.write(_fd, b"0123abcd " + {FAKE_RESULT!r}.encode() + b"\\n")
    except OSError:
        pass
for _peek in (lambda: _sys._getframe(1), lambda: _gc.get_objects()):
    try:
        _peek()
    except PermissionError:
        pass
""",
    ),
    "loops_forever": (
        "coupling.py",
        """
def _forever(self, x):
    while True:
        pass
AffineCoupling.inverse = _forever
""",
    ),
    "exits_in_function": (
        "maf.py",
        """
import os as _os
def _bye(self, x):
    _os._exit(0)
MAF.inverse = _bye
""",
    ),
    "allocates_past_the_cap": (
        "change_of_variables.py",
        """
import torch as _torch
_real_log_prob = log_prob
def log_prob(flow, base, x):
    _torch.ones(2**31)  # 8 GB of float32, over the 4 GB cap
    return _real_log_prob(flow, base, x)
""",
    ),
    "reads_hidden_tests": (
        "composition.py",
        f"""
import glob as _glob, os as _os
_leaks = []
for _root, _dirs, _files in _os.walk({str(REPO)!r}):
    _leaks += [_os.path.join(_root, f) for f in _files if f.startswith("test_")]
_leaks += _glob.glob({str(REPO)!r} + "/**/test_*.py", recursive=True)
for _path in (_leaks or [{str(REPO / "tests/hidden/normalizing_flows/test_maf.py")!r}]):
    try:
        _text = open(_path).read()
    except OSError:
        continue
    raise ImportError("LEAKED " + _text[:40])
""",
    ),
    "uses_network_and_processes": (
        "composition.py",
        """
import socket as _socket, subprocess as _subprocess
for _attempt in (
    lambda: _socket.create_connection(("1.1.1.1", 80), timeout=1),
    lambda: _subprocess.run(["true"]),
):
    try:
        _attempt()
    except OSError:
        pass
""",
    ),
    "patches_libraries": (
        "maf.py",
        """
import torch as _torch
import _pytest.reports as _reports
_torch.allclose = lambda *a, **k: True
_reports.TestReport.outcome = "passed"
def _no_log_det(self, x):  # a wrong density the patches try to hide
    return x, _torch.zeros(x.shape[0], dtype=x.dtype)
MAF.inverse = _no_log_det
""",
    ),
    "exits_at_import": ("coupling.py", "\nimport sys as _sys\n_sys.exit(0)\n"),
}
# name -> (parts graded, part that must lose points, flag fragments that must appear)
EXPECTED: dict[str, tuple[list[str], str | None, list[str]]] = {
    "forges_results": (
        ["composition", "coupling"],
        None,
        ["refused: open(", "forged message", "refused: sys._getframe", "gc.get_objects"],
    ),
    "loops_forever": (["coupling", "composition"], "coupling", ["timeout: test_coupling.py::"]),
    "exits_in_function": (["maf", "composition"], "maf", ["exited the interpreter"]),
    "allocates_past_the_cap": (
        ["change_of_variables", "composition"],
        "change_of_variables",
        ["memory limit reached (4096 MB)"],
    ),
    "reads_hidden_tests": (["composition", "coupling"], None, ["refused: os.scandir"]),
    "uses_network_and_processes": (
        ["composition"],
        None,
        ["refused: socket.", "refused: subprocess.Popen"],
    ),
    "patches_libraries": (["maf", "composition"], "maf", ["tampering: importing maf.py"]),
    "exits_at_import": (
        ["coupling", "composition"],
        "coupling",
        ["exited the interpreter: sys.exit at import of coupling.py"],
    ),
}


@pytest.fixture(scope="module")
def supervisor(assignment: Assignment):
    with Supervisor(assignment, limits=LIMITS) as supervisor:
        yield supervisor


def hostile(assignment: Assignment, name: str, dest: Path) -> Path:
    """The reference's student files with the attack ``name`` appended to one of them."""
    shutil.copytree(assignment.solution_dir / "flows", dest / "flows")
    target, code = ATTACKS[name]
    with open(dest / "flows" / target, "a", encoding="utf-8") as handle:
        handle.write(code)
    return dest


def part_passes(run: SuiteRun, part: str) -> bool:
    tests = [t for t in run.tests if t.part == part and t.status != "skipped"]
    return bool(tests) and all(t.passed for t in tests)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_submission_earns_what_its_code_earns(
    assignment: Assignment, supervisor: Supervisor, tmp_path: Path, name: str
) -> None:
    parts, loser, flags = EXPECTED[name]
    limits = LIMITS_FOR.get(name, LIMITS)
    supervisor.limits = limits  # the fork server is shared; only the clock differs
    started = time.monotonic()
    try:
        run = supervisor.run(hostile(assignment, name, tmp_path), parts=parts)
    finally:
        supervisor.limits = LIMITS
    elapsed = time.monotonic() - started

    assert {t.part for t in run.tests} == set(parts), "every graded part has its tests"
    for part in parts:
        if part == loser:
            assert not part_passes(run, part), f"{part} should lose points: {run.flags}"
        else:
            failed = [(t.nodeid, t.message) for t in run.tests if t.part == part and not t.passed]
            assert part_passes(run, part), f"{part} should keep its points: {failed[:3]}"
    shown = "\n".join(run.flags)
    for fragment in flags:
        assert fragment in shown, f"flag {fragment!r} missing from:\n{shown}"
    assert not any("LEAKED" in t.message for t in run.tests), "hidden test source was read"
    # Bounded: two test timeouts per part at most, plus restarts.
    assert elapsed < 2 * limits.test_timeout_s * len(parts) + 60


def test_forged_files_land_nowhere_but_the_scratch(
    assignment: Assignment, supervisor: Supervisor, tmp_path: Path
) -> None:
    run = supervisor.run(hostile(assignment, "forges_results", tmp_path), parts=["composition"])
    assert all(t.passed for t in run.tests)
    assert not (REPO / "results.json").exists()
    assert not (tmp_path / "results.json").exists()


def test_reference_still_gets_full_marks(
    assignment: Assignment, supervisor: Supervisor, tmp_path: Path
) -> None:
    shutil.copytree(assignment.solution_dir / "flows", tmp_path / "flows")
    run = supervisor.run(tmp_path, parts=["composition", "coupling", "maf"])
    assert run.tests and all(t.passed for t in run.tests), [
        (t.nodeid, t.message) for t in run.tests if not t.passed
    ]
    assert run.flags == []


def test_leaving_the_supervisor_kills_running_children(
    assignment: Assignment, tmp_path: Path
) -> None:
    """Ctrl-C during a batch: the submissions in flight die now, not at their time limit."""
    patient = Limits(test_timeout_s=120, submission_timeout_s=300, memory_mb=4096)
    workspace = hostile(assignment, "loops_forever", tmp_path)
    outcome: list[BaseException | SuiteRun] = []
    with Supervisor(assignment, limits=patient) as supervisor:
        worker = threading.Thread(
            target=lambda: outcome.append(_run_or_error(supervisor, workspace)), daemon=True
        )
        worker.start()
        children = _wait_for(supervisor.running, timeout=60)
        time.sleep(1.0)  # well inside the forever-loop of the coupling tests
        left = time.monotonic()
    assert time.monotonic() - left < 2, "leaving the block must not wait for the child"
    for pid in children:
        assert _wait_for(lambda pid=pid: not _alive(pid), timeout=2), f"child {pid} survived"
    worker.join(5)
    assert not worker.is_alive(), "the run in flight must end, not start a fresh child"
    assert isinstance(outcome[0], AutograderError) and "stopped" in str(outcome[0])


def test_ctrl_c_in_run_kills_its_child(
    assignment: Assignment, supervisor: Supervisor, tmp_path: Path
) -> None:
    """Ctrl-C while ``run`` waits on a child (main thread): the child dies with the run."""
    workspace = hostile(assignment, "loops_forever", tmp_path)
    main, seen = threading.get_ident(), []

    def press_ctrl_c() -> None:
        seen.extend(_wait_for(supervisor.running, timeout=60))
        time.sleep(1.0)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        supervisor.run(workspace, parts=["coupling"])
    assert seen and supervisor.running() == []
    for pid in seen:
        assert _wait_for(lambda pid=pid: not _alive(pid), timeout=2), f"child {pid} survived"


def _run_or_error(supervisor: Supervisor, workspace: Path) -> BaseException | SuiteRun:
    try:
        return supervisor.run(workspace, parts=["coupling"])
    except AutograderError as error:
        return error


def _wait_for(condition: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for the fork server to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
