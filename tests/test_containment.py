"""Per-submission containment (issue 14), graded through the real grader under ``bwrap`` and
``user``: memory of a whole process tree, RAM-backed files, disk and inodes, CPU hogs beside a
correct neighbour, and a process left running from one test into the next.

Each attack is the reference's ``composition.py`` with code appended that runs at import, in
the worker. One ``autograder grade --jobs 2 --part composition`` batch per backend grades them
all beside the reference (the neighbour), from a host laid out as Gradescope's ``setup.sh`` does
(:mod:`tests.user_host`: a closed course copy, an open Python install) with small limits.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from autograder.config import PACKAGE
from autograder.errors import AutograderError
from autograder.grading import sandbox
from autograder.grading.harness import EVALUATOR_SLOT_OFFSET
from tests import user_host
from tests.conftest import REPO
from tests.test_hostile import HOST_MARKER, USER_ATTACKS, for_user_host, processes_with
from tests.test_hostile import MARK as HOSTILE_MARK
from tests.test_hostile import attacks as hostile_attacks

pytestmark = pytest.mark.slow

MEMORY_MB, DISK_MB = 1536, 128
LIMITS = {"memory_mb": MEMORY_MB, "disk_mb": DISK_MB, "max_processes": 128, "test_timeout_s": 40}
MARK = f"contained-{uuid.uuid4().hex[:12]}"  # in the command line of every spawned process
FULL = 10.0  # composition's points
REFERENCE = REPO / "solutions" / "normalizing_flows" / PACKAGE

FORKED_MEMORY = """
import os as _os, select as _select, time as _time
_r, _w = _os.pipe()
for _ in range(8):  # up to 8 x 400 MB together, each child under its address-space cap
    if _os.fork() == 0:
        try:
            _held = []
            for _chunk in range(12):
                _b = bytearray(32 * 2**20)
                for _i in range(0, len(_b), 4096):
                    _b[_i] = 1
                _held.append(_b)
        except MemoryError:
            pass
        finally:
            _os.write(_w, b"x")
            _time.sleep(300)
            _os._exit(0)
_os.close(_w)
_told, _until = 0, _time.monotonic() + 30
while _told < 8 and _select.select([_r], [], [], max(0, _until - _time.monotonic()))[0]:
    _got = _os.read(_r, 8)
    if not _got:
        break
    _told += len(_got)
"""
RAM_FILES = """
import os as _os
for _folder in ("/tmp", "/dev/shm"):
    for _n in range(64):  # 64 files of 32 MB each, per folder: 2 GB, past memory_mb
        try:
            with open(_os.path.join(_folder, f"fill{_n}"), "wb") as _f:
                _f.write(b"x" * (32 * 2**20))
        except OSError:
            break
"""
DISK_FILLER = """
import os as _os
for _n in range(40):  # 40 files of 50 MB in the scratch folder
    try:
        with open(f"fill{_n}", "wb") as _f:
            _f.write(b"x" * (50 * 2**20))
    except OSError:
        break
"""
INODE_FILLER = """
import os as _os
_os.makedirs("many", exist_ok=True)
for _n in range(100_000):
    try:
        open(f"many/{_n}", "w").close()
    except OSError:
        break
"""
CPU_HOGS = f"""
import subprocess as _sp, sys as _sys
_hogs = []
def _keep_hogging():  # 45 busy loops, each in a session of its own, renewed by every call
    global _hogs
    _hogs = [h for h in _hogs if h.poll() is None]
    while len(_hogs) < 45:
        _hogs.append(_sp.Popen([_sys.executable, "-c", "while True: pass", {MARK!r} + "-hog"],
                               start_new_session=True))
_keep_hogging()
_forward = Sequential.forward
def _hogging_forward(self, z):
    _keep_hogging()
    return _forward(self, z)
Sequential.forward = _hogging_forward
"""
LEFT_RUNNING = f"""
import subprocess as _sp, sys as _sys
_sp.Popen([_sys.executable, "-c", "import time; time.sleep(600)", {MARK!r} + "-left"],
          start_new_session=True)
"""


@dataclass(frozen=True)
class Attack:
    code: str
    flag: str  # a fragment of the flag that names the limit


ATTACKS = {
    "forked_memory": Attack(FORKED_MEMORY, "memory limit reached"),
    "ram_files": Attack(RAM_FILES, "disk limit reached"),
    "disk_filler": Attack(DISK_FILLER, "disk limit reached"),
    "inode_filler": Attack(INODE_FILLER, "disk limit reached"),
    "cpu_hogs": Attack(CPU_HOGS, "left running by a test were killed"),
    "left_running": Attack(LEFT_RUNNING, "left running by a test were killed"),
}
BACKENDS = ("bwrap", "user")


@dataclass
class Batch:
    out: Path
    before: list[str]  # what the layout's root held before grading
    after: list[str]
    watched: tuple[dict[str, str], dict[str, str]]  # course files before, after
    stdout: str
    backend: str = ""
    hostile: tuple[str, ...] = ()  # test_hostile's attacks in the batch (under ``user``)
    reached: int = 0  # connections a worker made to the host's listener

    def results(self, name: str) -> dict:
        return json.loads((self.out / name / "results.json").read_text())

    def grading(self, name: str) -> dict:
        return json.loads((self.out / name / "grading.json").read_text())


def _files(root: Path) -> dict[str, str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return {str(p): str(p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module", params=BACKENDS)
def batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    problem = user_host.unavailable()
    if problem is not None:
        pytest.skip(problem)
    if request.param == "bwrap":
        try:
            sandbox.choose("bwrap")
        except AutograderError as exc:
            pytest.skip(f"bubblewrap cannot run here: {exc}")
    with user_host.user_host() as host, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        host.set_limits(**LIMITS)
        subs = host.root / "subs"
        out = host.root / "out"
        order = ["cpu_hogs", "neighbour", *(n for n in ATTACKS if n != "cpu_hogs")]
        codes = {name: attack.code for name, attack in ATTACKS.items()}
        # test_hostile's attacks on the OS sandbox, under ``user`` (bwrap: test_hostile's own)
        hostile = hostile_attacks(listener.getsockname()[1], out)
        if request.param == "user":
            order += USER_ATTACKS
            codes |= {n: for_user_host(hostile[n], host.course, host.root) for n in USER_ATTACKS}
        for name in order:
            shutil.copytree(REFERENCE, subs / name / PACKAGE)
            if name in codes:
                with open(subs / name / PACKAGE / "composition.py", "a") as handle:
                    handle.write("\n" + codes[name])
        watched = [host.course / "tests" / "hidden", host.course / "solutions"]
        before = sorted(p.name for p in host.root.iterdir())
        course_before = {k: v for w in watched for k, v in _files(w).items()}
        done = host.run(
            "grade", "normalizing_flows", *(str(subs / n) for n in order),
            "--out", str(out), "--jobs", "2", "--part", "composition",
            "--sandbox", request.param,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        after = sorted(p.name for p in host.root.iterdir())
        course_after = {k: v for w in watched for k, v in _files(w).items()}
        kept = tmp_path_factory.mktemp(f"out-{request.param}")
        shutil.copytree(out, kept, dirs_exist_ok=True)
        reached = 0
        with contextlib.suppress(BlockingIOError):
            while listener.accept():
                reached += 1
        yield Batch(
            kept, before, after, (course_before, course_after), done.stdout, request.param,
            tuple(n for n in order if n in USER_ATTACKS), reached,
        )  # fmt: skip


@pytest.mark.parametrize("name", USER_ATTACKS)
def test_hostile_attack_under_user_earns_what_its_code_earns(batch: Batch, name: str) -> None:
    """test_hostile's attacks on the OS sandbox, graded under ``user`` beside the neighbour."""
    if batch.backend != "user":
        pytest.skip("under bwrap: tests/test_hostile.py grades them in its own batch")
    attack, results = hostile_attacks(0, batch.out)[name], batch.results(name)
    failed = [(t["name"], t.get("output", "")[:300]) for t in results["tests"] if t["score"] < 1]
    if attack.zero:
        assert results["score"] == 0, failed
    elif attack.at_most:
        assert results["score"] <= FULL, failed
    else:
        assert results["score"] == FULL, failed
    assert "LEAKED" not in json.dumps(results)
    shown = "\n".join(results["extra_data"]["flags"])
    for fragment in attack.flags:
        assert fragment in shown, f"flag {fragment!r} missing from:\n{shown}"
    assert batch.reached == 0, "a worker reached the host's listener"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_earns_what_its_code_earns_and_is_flagged(batch: Batch, name: str) -> None:
    results = batch.results(name)
    flags = batch.grading(name)["run"]["flags"] if "run" in batch.grading(name) else []
    text = json.dumps(batch.grading(name))
    assert results["score"] == FULL, f"{name}: the reference's code earns full marks"
    assert ATTACKS[name].flag in text, f"{name}: no flag naming the limit in {flags}"


def test_neighbour_earns_full_marks_unflagged(batch: Batch) -> None:
    assert batch.results("neighbour")["score"] == FULL
    assert "limit reached" not in json.dumps(batch.grading("neighbour"))


def test_every_worker_stayed_under_its_memory_limit(batch: Batch) -> None:
    peaks = []
    for name in ["neighbour", *ATTACKS]:
        text = json.dumps(batch.grading(name))
        peaks += [float(p) for p in re.findall(r"memory peak (\d+) MB", text)]
    assert peaks, "the staff log reports each worker's peak"
    assert max(peaks) <= MEMORY_MB


def test_nothing_written_outside_the_scratch_folders(batch: Batch) -> None:
    assert batch.after == sorted([*batch.before, "out"])
    assert batch.watched[0] == batch.watched[1], "the course copy's hidden suites"
    folders = sorted(p.name for p in batch.out.iterdir() if p.is_dir())
    assert folders == sorted([*ATTACKS, *batch.hostile, "neighbour"]), "nothing beside results"


def test_no_spawned_process_survives(batch: Batch) -> None:
    assert processes_with(MARK) == [] and processes_with(HOSTILE_MARK) == []
    assert not HOST_MARKER.exists()


# -- a Docker-like host: no CAP_SYS_ADMIN (no namespace, no mount), no cgroup tree ------------

EVALUATOR_UID = sandbox.BASE_UID + EVALUATOR_SLOT_OFFSET  # + slot: the evaluation workers'
LEAVES_IN_EVALUATOR = f"""
import os as _os, sys as _sys, time as _time
for _folder in ("/tmp", "/dev/shm", "/var/tmp"):  # the host's own, where no namespace is made
    try:
        open(_os.path.join(_folder, {MARK!r} + "-left"), "w").write("left")
    except OSError:
        pass
if _os.getuid() >= {EVALUATOR_UID}:  # the part's evaluation worker
    if _os.fork() == 0:
        _os.setsid()
        _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(600)",
                                    {MARK!r} + "-evaluator"])
    _time.sleep(600)  # its start hangs until the submission's time runs out: the harness is killed
"""
BARE_LIMITS = {"test_timeout_s": 30, "submission_timeout_s": 30}  # the reference: 11 s loaded


@pytest.fixture(scope="module")
def bare_batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """``neighbour`` (the reference) and ``leaves_in_evaluator`` graded under ``user`` where the
    kernel refuses namespaces and mounts and no cgroup can be made (tests.user_host's
    ``unprivileged``: an empty tmpfs on /sys/fs/cgroup, CAP_SYS_ADMIN dropped)."""
    problem = user_host.unavailable() or (None if shutil.which("setpriv") else "no setpriv")
    if problem is not None:
        pytest.skip(problem)
    with user_host.user_host() as host:
        host.set_limits(**BARE_LIMITS)
        subs = host.root / "subs"
        for name in ("neighbour", "leaves_in_evaluator"):
            shutil.copytree(REFERENCE, subs / name / PACKAGE)
        with open(subs / "leaves_in_evaluator" / PACKAGE / "composition.py", "a") as handle:
            handle.write("\n" + LEAVES_IN_EVALUATOR)
        out = host.root / "out"
        done = host.run(
            "grade", "normalizing_flows",
            str(subs / "neighbour"), str(subs / "leaves_in_evaluator"),
            "--out", str(out), "--jobs", "2", "--part", "composition", "--sandbox", "user",
            unprivileged=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        kept = tmp_path_factory.mktemp("out-bare")
        shutil.copytree(out, kept, dirs_exist_ok=True)
        yield Batch(kept, [], [], ({}, {}), done.stdout)


def test_missing_namespaces_and_cgroups_are_flagged(bare_batch: Batch) -> None:
    for name in ("neighbour", "leaves_in_evaluator"):
        flags = bare_batch.results(name)["extra_data"]["flags"]
        for fragment in ("no network namespace", "no mount namespace", "no memory cgroup"):
            assert any(fragment in f for f in flags), f"{name}: {fragment!r} not in {flags}"
    assert bare_batch.results("neighbour")["score"] == FULL, "correct code loses nothing"


def test_what_the_evaluator_left_dies_with_the_killed_harness(bare_batch: Batch) -> None:
    flags = bare_batch.results("leaves_in_evaluator")["extra_data"]["flags"]
    assert any(f.startswith("timeout") for f in flags), flags
    assert processes_with(MARK) == []
    left = [f"{d}/{MARK}-left" for d in ("/tmp", "/dev/shm", "/var/tmp")]
    assert [p for p in left if Path(p).exists()] == [], "its files in the host's /tmp"
