"""The child-side sandbox in a real child process: audit-hook refusals, their flags, rlimits;
and the bounds on what a grading child may send back (artifacts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import types

import pytest

from autograder.config import Limits, load_course
from autograder.grading import runner
from autograder.grading.models import SuiteRun
from autograder.grading.supervisor import DevicePool, Supervisor, _death
from tests.conftest import ASSIGNMENT, REPO

CHILD = """
import json, resource, sys
from pathlib import Path
from autograder.config import Limits
from autograder.grading import sandbox

scratch, course = Path(sys.argv[1]), Path(sys.argv[2])
sandbox.apply_limits(Limits(memory_mb=2048, max_processes=32))
flags = []
policy = sandbox.Policy.for_run(scratch, protected=[course], grader=[])
sandbox.install_audit_hook(policy, flags.append)
sys.path.insert(0, str(scratch))
import attack  # the "student" module, a file in the scratch folder
limits = {
    "as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
}
# The grader's own code (no student frame on the stack) may still read the course's files.
grader_read = (course / "secret.py").read_text()
print(json.dumps({"results": attack.RESULTS, "flags": flags, "limits": limits,
                  "grader_read": grader_read}))
"""

ATTACK = """
import gc, os, socket, subprocess, sys
RESULTS = {}
def attempt(name, action):
    try:
        action()
        RESULTS[name] = "allowed"
    except PermissionError:
        RESULTS[name] = "refused"
    except OSError as exc:
        RESULTS[name] = f"os error {exc.errno}"
COURSE = sys.argv[2]
def tb_frame():
    try:
        raise ValueError
    except ValueError as exc:
        return exc.__traceback__.tb_frame
attempt("read course file", lambda: open(os.path.join(COURSE, "secret.py")).read())
attempt("list course", lambda: os.listdir(COURSE))
attempt("write outside scratch", lambda: open(os.path.join(COURSE, "results.json"), "w"))
attempt("write in scratch", lambda: open("mine.txt", "w").close())
attempt("read own scratch", lambda: open("mine.txt").read())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1))
attempt("subprocess", lambda: subprocess.run(["true"]))
attempt("kill", lambda: os.kill(os.getppid(), 0))
attempt("frame", lambda: sys._getframe(1))
attempt("gc", lambda: gc.get_objects())
attempt("traceback frame", tb_frame)
attempt("ctypes", lambda: __import__("ctypes").CDLL(None))
attempt("settrace", lambda: sys.settrace(None))
"""


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the attack module as student code under the sandbox; return what the child saw."""
    tmp_path = tmp_path_factory.mktemp("sandbox")
    scratch, course = tmp_path / "scratch", tmp_path / "course"
    scratch.mkdir()
    course.mkdir()
    (course / "secret.py").write_text("HIDDEN = 1\n")
    (scratch / "attack.py").write_text(textwrap.dedent(ATTACK))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(scratch), str(course)],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "action",
    [
        "read course file",
        "list course",
        "write outside scratch",
        "connect",
        "subprocess",
        "kill",
        "frame",
        "gc",
        "traceback frame",
        "ctypes",
        "settrace",
    ],
)
def test_student_code_is_refused(sandboxed: dict, action: str) -> None:
    assert sandboxed["results"][action] == "refused"


def test_scratch_stays_usable(sandboxed: dict) -> None:
    assert sandboxed["results"]["write in scratch"] == "allowed"
    assert sandboxed["results"]["read own scratch"] == "allowed"


def test_refusals_are_flagged_with_the_culprit(sandboxed: dict) -> None:
    flags = sandboxed["flags"]
    assert any(f.startswith("refused: open(") and "secret.py" in f for f in flags), flags
    assert any("socket." in f for f in flags), flags
    assert all(f.endswith("from attack.py") for f in flags), flags


def test_grader_code_is_not_restricted(sandboxed: dict) -> None:
    assert sandboxed["grader_read"] == "HIDDEN = 1\n"


def test_rlimits_are_applied(sandboxed: dict) -> None:
    assert sandboxed["limits"] == {"as": 2048 * 1024 * 1024, "core": 0, "fsize": 256 * 1024**2}


def test_device_pool_gives_each_child_its_own_gpu() -> None:
    pool = DevicePool(["0", "1", "2"])
    held = [pool.acquire() for _ in range(3)]
    assert sorted(held) == ["0", "1", "2"]
    pool.release("1")
    assert pool.acquire() == "1", "the freed GPU is the least busy one"
    assert pool.acquire() in {"0", "1", "2"}, "more children than GPUs share them"
    assert DevicePool([]).acquire() is None, "no GPU: CUDA_VISIBLE_DEVICES is left alone"


# A hidden suite of its own: one test records a full-size density artifact (as
# `density_artifacts` in the hidden test_train.py does), one more artifacts than a run may keep.
ARTIFACT_SUITE = {
    "conftest.py": """
def pytest_addoption(parser):
    parser.addoption("--submission")
""",
    "test_train.py": """
from artifacts import full_density, losses

def record(request, name, data):
    request.config.pluginmanager.get_plugin("autograder_runner").record_artifact(name, data)

def test_full_density(request):
    '''records a full-size density'''
    record(request, "MAF_density", full_density())
    record(request, "MAF_losses", losses())

def test_too_many(request):
    '''records more artifacts than a run keeps'''
    for index in range(100):
        record(request, f"extra_{index}", {"index": index})
""",
    "artifacts.py": """
def full_density():
    '''64 x 64 grid, 1000 data and 1000 sample points: about 10.2k values.'''
    grid = [[i * 64.0 + j for j in range(64)] for i in range(64)]
    data = [[float(i), -float(i)] for i in range(1000)]
    samples = [[0.5 * i, float("nan") if i == 999 else 1.0] for i in range(1000)]
    extent = [-2.0, 3.0, -1.5, 2.0]
    return {"model": "MAF", "extent": extent, "log_prob": grid, "data": data, "samples": samples}

def losses():
    return {"model": "MAF", "losses": [2.5 - 0.004 * i for i in range(500)]}
""",
}


@pytest.fixture(scope="module")
def artifact_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    suite = tmp_path_factory.mktemp("suite")
    for name, text in ARTIFACT_SUITE.items():
        (suite / name).write_text(textwrap.dedent(text))
    assignment = load_course(REPO).assignment(ASSIGNMENT)
    limits = Limits(test_timeout_s=60, submission_timeout_s=120, memory_mb=4096)
    with Supervisor(assignment, limits=limits, tests_dir=suite) as supervisor:
        return supervisor.run(assignment.solution_dir, parts=["train"])


@pytest.mark.slow
def test_full_size_artifact_arrives_complete(artifact_run: SuiteRun) -> None:
    assert all(t.passed for t in artifact_run.tests), artifact_run.tests
    by_name = {a.name: a.data for a in artifact_run.artifacts}
    density = by_name["MAF_density"]
    expected = _artifact_module().full_density()
    assert density["log_prob"] == expected["log_prob"]
    assert density["data"] == expected["data"]
    assert density["samples"][:999] == expected["samples"][:999], "sample points were cut"
    assert math.isnan(density["samples"][999][1]), "NaN must survive the channel"
    assert by_name["MAF_losses"] == _artifact_module().losses()


@pytest.mark.slow
def test_artifacts_per_run_are_capped(artifact_run: SuiteRun) -> None:
    assert len(artifact_run.artifacts) == runner.MAX_ARTIFACTS
    extras = [a.data["index"] for a in artifact_run.artifacts if a.name.startswith("extra_")]
    assert extras == list(range(runner.MAX_ARTIFACTS - 2)), "the first ones are kept, in order"


def _artifact_module() -> types.ModuleType:
    module = types.ModuleType("artifacts")
    exec(textwrap.dedent(ARTIFACT_SUITE["artifacts.py"]), module.__dict__)
    return module


@pytest.mark.parametrize(
    ("exitcode", "shown"),
    [
        (-9, "killed by SIGKILL (past the memory limit of 4096 MB?)"),
        (-11, "crashed (SIGSEGV)"),
        (0, "exited the interpreter (exit status 0)"),
    ],
)
def test_a_dead_child_is_named_with_the_memory_limit(exitcode: int, shown: str) -> None:
    assert _death(exitcode, 4096) == shown
