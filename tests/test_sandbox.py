"""The child-side sandbox in a real child process: audit-hook refusals, their flags, rlimits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from autograder.grading.supervisor import DevicePool

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
