"""Hostile submissions graded through the real grader and the bubblewrap sandbox (issue 8).

Every attack is the reference with code appended to one student file. Some also carry a
*sabotage*: a real bug (a wrong log-det, a method that raises) that the attack tries to hide.
What the code earns on its own is what its *twin* earns: the same submission with the sabotage
and without the attack (the reference, when there is no sabotage). For each attack we assert

- its points per graded part equal (or, where the attack also hurts itself, stay at most) the
  twin's;
- the flags the grader must raise (and none where the attack achieves nothing);
- that no file of the course repository (hidden suites, solutions), of the batch's output folder
  or of the host's ``/tmp`` changed;
- that no process it started is alive afterwards (each spawned process carries a unique marker in
  its command line, looked for in the host's ``/proc``).

The reference earns full marks beside the attacks. Everything runs in one Supervisor with two
submissions at a time and short limits; the cross-submission attacks run in one ``grade_batch``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from autograder.config import PACKAGE, Assignment, Course, Limits
from autograder.errors import AutograderError
from autograder.grading import sandbox
from autograder.grading.batch import grade_batch
from autograder.grading.extensions import Extensions
from autograder.grading.models import SuiteRun
from autograder.grading.sandbox.cgroup import WorkerCgroup
from autograder.grading.scoring import score
from autograder.grading.supervisor import Supervisor
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Reference tests take milliseconds; a forever loop costs two of these per part.
LIMITS = Limits(test_timeout_s=6, submission_timeout_s=240, memory_mb=4096, max_processes=64)
MARK = f"hostile-{uuid.uuid4().hex[:12]}"  # in every spawned command line and marker file
HOST_MARKER = Path("/tmp") / MARK  # what a surviving process would write on the host
WATCHED = ("tests/hidden", "solutions")  # course files no submission may change


@dataclass(frozen=True)
class Attack:
    """One hostile submission: ``code`` appended to ``file``, graded on ``parts``."""

    file: str  # student file, e.g. "composition.py"
    code: str
    parts: tuple[str, ...]
    sabotage: str = ""  # the code's own bug (also in the twin); "" means the twin is the reference
    at_most: bool = False  # the attack may cost itself more than its twin (never earn more)
    flags: tuple[str, ...] = ()  # fragments that must appear among the flags
    zero: tuple[str, ...] = ()  # parts that must earn nothing


# -- sabotages: real bugs whose points the attacks try to win back ------------------------------

MAF_ZERO_LOGDET = """
import torch as _t
def _inverse_without_log_det(self, x):
    return MAF._real_inverse(self, x)[0], _t.zeros(x.shape[0], dtype=x.dtype)
MAF._real_inverse = MAF.inverse
MAF.inverse = _inverse_without_log_det
"""
MAF_INVERSE_RAISES = """
def _inverse_raises(self, x):
    raise RuntimeError("broken")
MAF.inverse = _inverse_raises
"""
COV_ZERO_LOG_PROB = """
import torch as _t
def log_prob(flow, base, x):
    return _zeros_like_batch(x)
def _zeros_like_batch(x):
    return _t.zeros(x.shape[0], dtype=x.dtype)
"""
COV_LOG_PROB_RAISES = """
def log_prob(flow, base, x):
    raise MemoryError("stand-in for the allocation")
"""
COUPLING_INVERSE_RAISES = """
def _inverse_raises(self, x):
    raise RuntimeError("broken")
AffineCoupling.inverse = _inverse_raises
"""
TRAIN_WITHOUT_TRAINING = """
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    return [_loss(0.0) for _ in range(steps)]
_loss = float
"""

# -- attacks ------------------------------------------------------------------------------------

SPAWN = f"""
import ctypes as _ctypes, os as _os, sys as _sys
_SLEEPER = (
    "import os, sys, time\\n"
    "for _ in range(600):\\n"
    "    time.sleep(0.5)\\n"
    "    for p in ({str(HOST_MARKER)!r}, '/tmp/' + sys.argv[1], {str(REPO / MARK)!r}):\\n"
    "        try: open(p, 'w').write('survived')\\n"
    "        except OSError: pass\\n"
)
def _detach(how):
    argv = [_sys.executable, "-c", _SLEEPER, {MARK!r} + "-" + how]
    if how == "posix_spawn":
        try:
            _os.posix_spawn(_sys.executable, argv, dict(_os.environ), setsid=True)
        except (OSError, TypeError):
            pass
        return
    pid = _ctypes.CDLL(None).syscall(57) if how == "syscall" else _os.fork()  # 57: fork, x86-64
    if pid == 0:
        try:
            _os.setsid()
            _os.execv(_sys.executable, argv)
        finally:
            _os._exit(0)
for _how in ("fork", "syscall", "posix_spawn"):
    _detach(_how)
"""

FORK_BOMB = f"""
import os as _os, sys as _sys
def _bomb():
    for _ in range(5000):  # a fork bomb: each child becomes a sleeper in a session of its own
        try:
            pid = _os.fork()
        except OSError:  # the process cap: what must stop it
            return
        if pid == 0:
            try:
                _os.setsid()
                _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(600)",
                                            {MARK!r} + "-bomb"])
            finally:
                _os._exit(0)
_bomb()
"""

# name -> sha256 of each hidden suite: a file found by name is a leak only with the same content
SUITE_HASHES = {
    p.name: hashlib.sha256(p.read_bytes()).hexdigest()
    for p in (REPO / "tests/hidden/normalizing_flows").glob("test_*.py")
}
REACH_COURSE = f"""
import hashlib as _hashlib, os as _os
_REPO, _HIDDEN = {str(REPO)!r}, {str(REPO / "tests/hidden/normalizing_flows/test_maf.py")!r}
_SUITES = {SUITE_HASHES!r}
_leaks = []
def _try(action):
    try:
        _leaks.append(action()[:40])
    except (OSError, ValueError, TypeError):
        pass
def _via_dir_fd():
    root = _os.open("/", _os.O_RDONLY)
    fd = _os.open(_HIDDEN.lstrip("/"), _os.O_RDONLY, dir_fd=root)
    return _os.read(fd, 100)
_try(_via_dir_fd)
_try(lambda: open(_HIDDEN, "rb").read())
for _pid in ["self", "1", str(_os.getppid())] + [p for p in _os.listdir("/proc") if p.isdigit()]:
    for _link in ("root", "cwd"):
        _try(lambda: open(f"/proc/{{_pid}}/{{_link}}" + _HIDDEN, "rb").read())
        _try(lambda: str(_os.listdir(f"/proc/{{_pid}}/{{_link}}" + _REPO)).encode())
    _try(lambda: _os.readlink(f"/proc/{{_pid}}/cwd").encode() if "main" in _os.readlink(
        f"/proc/{{_pid}}/cwd") else _os.listdir("/nonexistent"))
for _root, _dirs, _files in _os.walk("/"):
    _dirs[:] = [d for d in _dirs if d not in ("proc", "sys", "dev", "usr", "root")]
    for _f in _files:  # a hidden suite's own file (a library's test of the same name is not)
        if _f in _SUITES:
            _try(lambda: _f.encode() if _hashlib.sha256(open(_os.path.join(_root, _f), "rb").read(
                )).hexdigest() == _SUITES[_f] else _os.listdir("/nonexistent"))
for _target in (_REPO + "/solutions/normalizing_flows/flows/maf.py", _REPO + "/pwned", {{OUT}}):
    try:
        open(_target, "w").write("pwned")
        _leaks.append(b"wrote " + _target.encode())
    except OSError:
        pass
if _leaks:
    raise ImportError("LEAKED " + repr(_leaks[:3]))
"""

FRAME_WALK = """
import inspect as _inspect, sys as _sys
import torch as _torch
def _outside_frames():
    seen = []
    frame = _sys._getframe()
    while frame is not None:
        seen.append(frame.f_code.co_filename)
        frame = frame.f_back
    seen += [info.filename for info in _inspect.stack()]
    for depth in range(1, 12):  # torch.jit's resolution callbacks hand out callers' names
        try:
            callback = _torch._jit_internal.createResolutionCallbackFromFrame(depth)
        except (AttributeError, ValueError, AssertionError):  # past the outermost frame
            break
        for name in ("session", "plugin", "item", "expected", "harness", "send"):
            try:
                if callback(name) is not None:
                    seen.append("jit:" + name)
            except Exception:
                pass
    allowed = ("/grader/", "/work/submission/", "/torch/", "/python3", "<frozen")
    return [f for f in seen if not f.startswith(allowed) and not any(a in f for a in allowed)]
_forward = Sequential.forward
def _spying_forward(self, z):
    leaked = _outside_frames()
    if leaked:
        raise RuntimeError("LEAKED frames " + repr(leaked[:3]))
    return _forward(self, z)
Sequential.forward = _spying_forward
"""

COMPILED_STRINGS = """
_SOURCE = '''
def _forward_from_string(self, z):
    import sys
    sys._getframe().f_back  # a frame from code under a made-up file name
    return _real_forward(self, z)
'''
_real_forward = Sequential.forward
exec(compile(_SOURCE, "/grader/harness.py", "exec"), globals())
exec(compile(_SOURCE, "<pytest hidden test_composition.py>", "exec"), globals())
Sequential.forward = _forward_from_string
"""

LYING_TENSOR = """
import torch as _t
class _Agreeable(_t.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("__eq__", "eq", "allclose", "isclose", "equal", "__lt__", "le", "lt", "__le__"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})
_honest_log_prob = log_prob
def log_prob(flow, base, x):
    return _honest_log_prob(flow, base, x).as_subclass(_Agreeable)
"""

LYING_FLOAT = """
class _Agreeable(float):
    def __eq__(self, other):
        return True
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    __hash__ = float.__hash__
_loss = _Agreeable
"""

PATCH_LIBRARIES = """
import torch as _torch, torch.distributions as _dists
_torch.allclose = lambda *a, **k: True
_torch.Tensor.__eq__ = lambda *a, **k: True
_dists.Normal.log_prob = lambda self, value: _torch.zeros(value.shape[:-1] or value.shape)
_dists.Independent.log_prob = lambda self, value: _torch.zeros(value.shape[0])
try:
    import _pytest.reports as _reports
    _reports.TestReport.outcome = "passed"
except ImportError:
    pass
"""

PATCH_UNDONE = """
import weakref as _weakref, torch as _torch
_original_allclose = _torch.allclose
class _Undo:
    pass
def _patched_inverse(self, x):
    _torch.allclose = lambda *a, **k: True
    token = _Undo()
    _weakref.finalize(token, setattr, _torch, "allclose", _original_allclose)
    return MAF._real_inverse(self, x)[0], _torch.zeros(x.shape[0], dtype=x.dtype)
MAF.inverse = _patched_inverse
"""

FORGE_MESSAGES = """
import json as _json, os as _os
_fake = _json.dumps({"score": 100.0, "tests": []})
for _d in (".", "..", "/tmp", "/work", "/grader"):
    try:
        with open(_os.path.join(_d, "results.json"), "w") as _f:
            _f.write(_fake)
    except OSError:
        pass
for _fd in range(3, 256):
    for _message in (b"0123abcd not a frame\\n", b'{"kind": "result", "status": "passed"}\\n'):
        try:
            _os.write(_fd, _message)
        except OSError:
            pass
"""

NETWORK_AND_PROCESSES = """
import socket as _socket, subprocess as _subprocess
for _attempt in (
    lambda: _socket.create_connection(("127.0.0.1", {PORT}), timeout=1),
    lambda: _socket.create_connection(("1.1.1.1", 80), timeout=1),
    lambda: _subprocess.run(["kill", "-9", "-1"], timeout=5),
):
    try:
        _attempt()
    except (OSError, _subprocess.SubprocessError):
        pass
"""

LOUD = """
import sys as _sys
_loud = [True]
_init = Sequential.__init__
def _noisy_init(self, *flows):
    if _loud.pop() if _loud else False:
        chunk = "x" * (1 << 20)
        for _ in range(300):  # 300 MB on stdout
            _sys.stdout.write(chunk)
        _sys.stdout.flush()
    _init(self, *flows)
Sequential.__init__ = _noisy_init
"""

FOREVER = """
def _forever(self, x):
    while True:
        pass
AffineCoupling.inverse = _forever
"""

EXIT_IN_FUNCTION = """
import os as _os
def _bye(self, x):
    _os._exit(0)
MAF.inverse = _bye
"""

ALLOCATE = """
import torch as _torch
_real_log_prob = log_prob
def log_prob(flow, base, x):
    _torch.ones(2**31)  # 8 GB of float32, over the 4 GB cap
    return _real_log_prob(flow, base, x)
"""


def attacks(port: int, out: Path) -> dict[str, Attack]:
    """The attacks; ``port`` is a host listener, ``out`` the batch's output folder."""
    composition = ("composition",)
    return {
        "forges_results_and_messages": Attack(
            "composition.py", FORGE_MESSAGES, composition, at_most=True, zero=composition
        ),
        "loops_forever": Attack(
            "coupling.py",
            FOREVER,
            ("coupling",),
            COUPLING_INVERSE_RAISES,
            at_most=True,
            flags=("timeout:",),
        ),
        "exits_in_function": Attack(
            "maf.py",
            EXIT_IN_FUNCTION,
            ("maf",),
            MAF_INVERSE_RAISES,
            at_most=True,
            flags=("exited",),
        ),
        "allocates_past_the_cap": Attack(
            "change_of_variables.py",
            ALLOCATE,
            ("change_of_variables",),
            COV_LOG_PROB_RAISES,
            at_most=True,
            flags=("memory limit reached",),
        ),
        "reaches_course_and_output_files": Attack(
            "composition.py", REACH_COURSE.replace("{OUT}", repr(str(out))), composition
        ),
        "network_and_processes": Attack(
            "composition.py",
            NETWORK_AND_PROCESSES.replace("{PORT}", str(port)),
            composition,
            at_most=True,  # `kill -9 -1` ends every process of its own sandbox: the worker too
            flags=("SIGKILL",),  # bwrap's status 128+9, named as the signal (issue 14)
            zero=composition,
        ),
        "walks_caller_frames": Attack("composition.py", FRAME_WALK, composition),
        "compiles_under_made_up_names": Attack("composition.py", COMPILED_STRINGS, composition),
        # Its processes outlive the test that started them: killed and flagged (issue 14).
        "detached_processes": Attack(
            "composition.py", SPAWN, composition, flags=("left running by a test were killed",)
        ),
        "fork_bomb": Attack(
            "composition.py",
            FORK_BOMB,
            composition,
            # Flagged where the grader can cap processes with a cgroup (root here); elsewhere
            # RLIMIT_NPROC stops it silently.
            flags=("process limit reached",) if _pids_cgroup_here() else (),
        ),
        "lying_tensor": Attack(
            "change_of_variables.py", LYING_TENSOR, ("change_of_variables",), COV_ZERO_LOG_PROB
        ),
        "lying_float": Attack(
            "train.py", LYING_FLOAT, ("train",), TRAIN_WITHOUT_TRAINING, at_most=True
        ),
        "patches_libraries": Attack("maf.py", PATCH_LIBRARIES, ("maf",), MAF_ZERO_LOGDET),
        "patch_undone_before_check": Attack("maf.py", PATCH_UNDONE, ("maf",), MAF_ZERO_LOGDET),
        "prints_300_mb": Attack("composition.py", LOUD, composition, at_most=True),
        "exits_at_import": Attack(
            "coupling.py",
            "\nimport sys as _sys\n_sys.exit(0)\n",
            ("coupling",),
            at_most=True,
            zero=("coupling",),
        ),
    }


# -- helpers ------------------------------------------------------------------------------------


def submission(assignment: Assignment, dest: Path, *appended: tuple[str, str]) -> Path:
    """The reference's ``flows/`` with each ``(file, code)`` appended, in order."""
    shutil.copytree(assignment.solution_dir / PACKAGE, dest / PACKAGE)
    for file, code in appended:
        with open(dest / PACKAGE / file, "a", encoding="utf-8") as handle:
            handle.write("\n" + code)
    return dest


def points(assignment: Assignment, run: SuiteRun, parts: tuple[str, ...]) -> dict[str, float]:
    graded = score(assignment, run, parts=list(parts))
    return {part: round(graded.parts[part].earned, 6) for part in parts}


def fingerprint(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (except bytecode) with its mtime and content hash."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file() and "__pycache__" not in path.parts:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = f"{path.stat().st_mtime_ns}:{digest}"
    return found


def _pids_cgroup_here() -> bool:
    cgroup = WorkerCgroup(64, 1.0, 8)
    try:
        return "pids" in cgroup.folders
    finally:
        cgroup.remove()


def processes_with(marker: str) -> list[str]:
    """Command lines of live host processes that carry ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{pid}: {cmdline[:120]}")
    return found


@dataclass
class Graded:
    """What the module's grading produced, for the tests to inspect."""

    assignment: Assignment
    attacks: dict[str, Attack]
    runs: dict[str, SuiteRun]  # attack name -> its run
    twins: dict[str, SuiteRun]  # sabotage code ("" = reference) -> the twin's run
    accepted: list[socket.socket]
    before: dict[str, str]
    out: Path


@pytest.fixture(scope="module")
def host_listener() -> Iterator[socket.socket]:
    """A TCP listener on the host's loopback that no worker may reach."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


@pytest.fixture(scope="module")
def graded(
    assignment: Assignment,
    host_listener: socket.socket,
    tmp_path_factory: pytest.TempPathFactory,
) -> Graded:
    try:
        sandbox.choose("bwrap")
    except AutograderError as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")
    root = tmp_path_factory.mktemp("hostile")
    out = root / "out"
    out.mkdir()
    (out / "results.json").write_text('{"score": 1.0}')
    listed = attacks(host_listener.getsockname()[1], out)
    before = fingerprint(*(REPO / w for w in WATCHED), out)
    jobs: dict[str, tuple[Path, tuple[str, ...]]] = {}
    twin_parts: dict[str, set[str]] = {
        "": {"composition", "coupling", "maf", "change_of_variables"}
    }
    for name, attack in listed.items():
        appended = [(attack.file, attack.sabotage)] if attack.sabotage else []
        jobs[name] = (
            submission(assignment, root / name, *appended, (attack.file, attack.code)),
            attack.parts,
        )
        twin_parts.setdefault(attack.sabotage, set()).update(attack.parts)
    twin_dirs = {}
    for index, (sabotage, parts) in enumerate(twin_parts.items()):
        file = next((a.file for a in listed.values() if a.sabotage == sabotage), "")
        appended = [(file, sabotage)] if sabotage else []
        twin_dirs[sabotage] = (submission(assignment, root / f"twin{index}", *appended), parts)
    with (
        Supervisor(assignment, limits=LIMITS, sandbox_name="bwrap") as supervisor,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        futures = {
            key: pool.submit(supervisor.run, path, parts=sorted(parts))
            for key, (path, parts) in {
                **jobs,
                **{("twin", k): v for k, v in twin_dirs.items()},
            }.items()
        }
        results = {key: future.result() for key, future in futures.items()}
    accepted = []
    while True:
        try:
            accepted.append(host_listener.accept()[0])
        except BlockingIOError:
            break
    return Graded(
        assignment,
        listed,
        {k: v for k, v in results.items() if not isinstance(k, tuple)},
        {k[1]: v for k, v in results.items() if isinstance(k, tuple)},
        accepted,
        before,
        out,
    )


ATTACK_NAMES = sorted(attacks(0, Path("/out")))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_earns_what_its_code_earns(graded: Graded, name: str) -> None:
    attack, run = graded.attacks[name], graded.runs[name]
    twin = graded.twins[attack.sabotage]
    earned = points(graded.assignment, run, attack.parts)
    deserved = points(graded.assignment, twin, attack.parts)
    assert {t.part for t in run.tests} == set(attack.parts), "every graded part has its tests"
    detail = [(t.nodeid, t.status, t.message[:120]) for t in run.tests if not t.passed][:4]
    for part in attack.parts:
        if attack.at_most:
            assert earned[part] <= deserved[part], f"{part}: {earned} > {deserved}; {detail}"
        else:
            assert earned[part] == deserved[part], f"{part}: {earned} != {deserved}; {detail}"
    for part in attack.zero:
        assert earned[part] == 0, f"{part} must earn nothing: {earned}"
    assert not any("LEAKED" in t.message for t in run.tests), detail


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_is_flagged(graded: Graded, name: str) -> None:
    attack, run = graded.attacks[name], graded.runs[name]
    shown = "\n".join(run.flags)
    for fragment in attack.flags:
        assert fragment in shown, f"flag {fragment!r} missing from:\n{shown}"
    if not attack.flags and not attack.at_most:
        assert run.flags == [], "an attack that achieved nothing leaves no flag to explain"


def test_reference_earns_full_marks_beside_the_attacks(graded: Graded) -> None:
    run = graded.twins[""]
    parts = ("change_of_variables", "composition", "coupling", "maf")
    full = {p: float(graded.assignment.parts[p]) for p in parts}
    assert points(graded.assignment, run, parts) == full, [
        (t.nodeid, t.message[:100]) for t in run.tests if not t.passed
    ]
    assert run.flags == []


def test_no_file_outside_the_scratch_changed(graded: Graded) -> None:
    after = fingerprint(*(REPO / w for w in WATCHED), graded.out)
    assert after == graded.before
    assert not HOST_MARKER.exists() and not (REPO / MARK).exists()
    assert not (REPO / "pwned").exists() and not (REPO / "results.json").exists()


def test_no_process_of_a_submission_survives(graded: Graded) -> None:
    assert processes_with(MARK) == []


def test_the_host_listener_was_never_reached(graded: Graded) -> None:
    assert graded.accepted == []


def test_printing_300_mb_costs_at_most_the_test_that_printed(graded: Graded) -> None:
    run = graded.runs["prints_300_mb"]
    assert sum(not t.passed for t in run.tests) <= 1
    assert len(run.log) <= 40_000, "the worker's output is kept capped"


# -- one batch, two at a time: another submission's output, a linked flows/ ---------------------

TAMPER = """
import json as _json, os as _os
_OUT = {out!r}
_forged = _json.dumps({{"score": 0.0, "output": "forged", "tests": []}})
for _root in [_OUT, "/tmp", "/work", "/proc/1/root" + _OUT] + [
    f"/proc/{{p}}/cwd" for p in _os.listdir("/proc") if p.isdigit()
]:
    try:
        for _dir, _dirs, _files in _os.walk(_root):
            for _f in _files:
                if _f in ("results.json", "grading.json", "grades.csv"):
                    try:
                        open(_os.path.join(_dir, _f), "w").write(_forged)
                    except OSError:
                        pass
    except OSError:
        pass
for _victim in ("victim", "linked"):
    try:
        _os.makedirs(_os.path.join(_OUT, _victim), exist_ok=True)
        open(_os.path.join(_OUT, _victim, "results.json"), "w").write(_forged)
    except OSError:
        pass
"""


def test_batch_attacks_leave_other_submissions_alone(
    course: Course, assignment: Assignment, tmp_path: Path
) -> None:
    try:
        sandbox.choose("bwrap")
    except AutograderError as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")
    out = tmp_path / "out"
    victim = submission(assignment, tmp_path / "victim")
    tamperer = submission(
        assignment, tmp_path / "tamperer", ("composition.py", TAMPER.format(out=str(out)))
    )
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / PACKAGE).symlink_to(assignment.solution_dir / PACKAGE)
    before = fingerprint(*(REPO / w for w in WATCHED))
    quick = dataclasses.replace(assignment, limits=LIMITS)
    graded = grade_batch(
        course,
        quick,
        [victim, tamperer, linked],
        out,
        jobs=2,
        parts=["composition"],
        extensions=Extensions(),
        progress=False,
        sandbox="bwrap",
    )
    full = float(assignment.parts["composition"])
    by_name = {g.name: g for g in graded}
    assert by_name["victim"].score.total == full
    assert by_name["tamperer"].score.total == full, "its code is the reference's"
    assert by_name["linked"].score.total == 0, "a linked flows/ is refused: the stubs earn 0"
    assert any("refused" in f and PACKAGE in f for f in by_name["linked"].run.flags)
    for name in ("victim", "tamperer"):
        results = json.loads((out / name / "results.json").read_text())
        assert results["score"] == full and "forged" not in json.dumps(results), name
        assert by_name[name].run.flags == []
    assert fingerprint(*(REPO / w for w in WATCHED)) == before
    assert processes_with(MARK) == []


# -- a notebook that plants links where the grader (root) writes the executed notebook ----------

PLANT_LINKS = """
import glob, os
planted = []
for folder in [os.getcwd(), *glob.glob(os.path.join(os.getcwd(), "..", "autograded", "*", "*"))]:
    for name in ("explore.ipynb", "explore.html"):
        path = os.path.join(folder, name)
        try:
            if os.path.lexists(path):
                os.remove(path)
            os.symlink({target!r} if name.endswith("ipynb") else {secret!r}, path)
            planted.append(path)
        except OSError:
            pass
print("PLANTED", planted)
"""


def _linking_notebook(assignment: Assignment, folder: Path, target: Path, secret: Path) -> Path:
    """The stubs and the released notebook, its first cell planting the links."""
    import nbformat

    from autograder.examples import STUBS, materialize

    submitted = materialize(assignment, STUBS, folder)
    nb = nbformat.read(assignment.release_dir / assignment.notebook.file, as_version=4)
    code = PLANT_LINKS.format(target=str(target), secret=str(secret))
    nb.cells.insert(0, nbformat.v4.new_code_cell(code))
    nbformat.write(nb, submitted / "explore.ipynb")
    return submitted


@pytest.mark.parametrize("backend_name", ["bwrap", "user"])
def test_notebook_links_never_redirect_the_graders_writes(
    assignment: Assignment, tmp_path: Path, backend_name: str
) -> None:
    """The kernel writes only its own folder: a link it plants where nbgrader (as root) writes
    the executed notebook, or where the grader reads it back for formgrader, would write over
    (or copy out) any file of the host."""
    import nbformat

    from tests import user_host

    if backend_name == "user" and user_host.unavailable():
        pytest.skip(user_host.unavailable())
    if backend_name == "bwrap":
        try:
            sandbox.choose("bwrap")
        except AutograderError as exc:
            pytest.skip(f"bubblewrap cannot run here: {exc}")
    with user_host.user_host() as host:  # the victims lie outside every sandbox folder
        target, secret = host.root / "target.txt", host.root / "secret.txt"
        target.write_text("untouched")
        secret.write_text(f"SECRET-{MARK}")
        submitted = _linking_notebook(assignment, host.root / "student", target, secret)
        db = host.root / "db"
        db.mkdir()
        args = ["--out", str(host.root / "out"), "--sandbox", backend_name, "--part", "notebook"]
        args += ["--db", f"sqlite:///{db / 'gradebook.db'}"]
        done = host.run("grade", "normalizing_flows", str(submitted), *args)
        assert done.returncode == 0, done.stderr[-3000:]
        kept = sorted(db.rglob("*.ipynb"))
        assert kept, done.stderr[-2000:]
        outputs = "".join(
            o.get("text", "")
            for c in nbformat.read(kept[0], as_version=4).cells
            for o in c.get("outputs", [])
        )
        assert "PLANTED" in outputs, "the planting cell ran"
        assert target.read_text() == "untouched", "the grader wrote through a planted link"
        assert not any(MARK in p.read_text(errors="replace") for p in db.rglob("*") if p.is_file())


# -- the same attacks under the `user` backend, on a host laid out as Gradescope's setup.sh does -

# What the OS sandbox must stop (files, processes, network, output), graded under ``user`` in
# tests/test_containment.py's batch (one batch per backend); the attacks on Python objects
# (lying tensors, frame walks, patched libraries) meet the same harness under any backend.
USER_ATTACKS = (
    "reaches_course_and_output_files",
    "network_and_processes",
    "detached_processes",
    "fork_bomb",
    "forges_results_and_messages",
    "prints_300_mb",
)


def for_user_host(attack: Attack, course: Path, root: Path) -> str:
    """``attack``'s code aimed at a course copy laid out for ``user`` (:mod:`tests.user_host`).

    The sandbox user sees the host's open folders (this CI host's own repository among them),
    so the hunt for the hidden suites' files covers the laid-out host ``root``.
    """
    code = attack.code.replace(str(REPO), str(course))
    return code.replace('_os.walk("/")', f"_os.walk({str(root)!r})")
