"""The child side of grading: run the hidden suites in-process with pytest, report over a pipe.

Order of a child's life (one submission, or what is left of it after a crash):

1. limits and isolation (:mod:`autograder.grading.sandbox`) that need no Python state;
2. pytest collects the hidden tests: only the course's code has run so far;
3. :func:`_run_loop` (our ``pytest_runtestloop``) draws a random token, sends the list of tests
   with it, then locks down (privilege drop, audit hook), pre-imports each student module in its
   own step, and runs the tests one by one;
4. every message afterwards starts with the token, which lives only in that function's frame
   (reachable through frame introspection alone, which the audit hook refuses to student code).

The verdict of a test is taken in a hookwrapper around its call (and setup) phase, from the
exception that came out, not from pytest's report objects; after each test the identities of key
library objects are compared with a snapshot taken at lockdown, and a change fails the test.
Messages are Python literals (``repr`` of plain tuples) written with ``os.write``, both bound
before student code runs, so a patched ``json`` or ``os`` cannot see or alter them. An artifact
travels as JSON text inside its message (json's C encoder, also bound before student code runs):
the parent parses a density grid with ``json.loads`` in milliseconds, where ``ast.literal_eval``
takes a tenth of a second. A test's result goes out in one write with the next test's start.
"""

from __future__ import annotations

import importlib
import itertools
import operator
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring_ascii
from pathlib import Path
from typing import Any

import pytest

from autograder.config import PACKAGE, Limits
from autograder.grading import sandbox

PLUGIN_NAME = "autograder_runner"
MAX_MESSAGE = 2000  # characters of a failure message
# A density artifact (`density_artifacts` in the hidden test_train.py) is ~10.2k items: a
# 64 x 64 grid, <= 1000 data and <= 1000 sample points, a few scalars; a loss curve is <= 500.
# Twice that is allowed, per artifact; a run records 2 models x (density + losses).
MAX_ARTIFACT_ITEMS = 20_000  # values (containers included) kept of one artifact; the rest: None
MAX_ARTIFACTS = 16  # artifacts kept of one submission's run; later ones are dropped
_getframe = sys._getframe  # bound now: the submission may rebind sys._getframe


@dataclass
class Job:
    """What one child process runs; everything here comes from the trusted parent."""

    submission: Path  # folder holding flows/ (inside scratch)
    scratch: Path  # the child's private folder: cwd, HOME, TMPDIR
    tests_dir: Path
    log_path: Path  # stdout/stderr of the child, outside scratch
    limits: Limits
    protected: list[Path]  # folders the submission may not read (course repository, ...)
    parts: list[str] | None = None
    skip: set[str] = field(default_factory=set)  # node ids already graded
    skip_imports: set[str] = field(default_factory=set)  # parts whose import killed a child
    threads: int = 1
    cuda_devices: str | None = None  # CUDA_VISIBLE_DEVICES for this child; None: leave as is


def part_of(nodeid: str) -> str:
    """``test_coupling.py::test_x[a]`` -> ``coupling``."""
    return Path(nodeid.split("::")[0]).stem.removeprefix("test_")


def child_main(job: Job, writer: Any) -> None:
    """Entry point of a grading child (forked from the warm fork server)."""
    os.setsid()  # own process group: the parent kills the whole group
    # Inherited descriptors lead to the fork server and multiprocessing's resource tracker,
    # which serve every submission: student code must not be able to write to them.
    channel = writer.fileno()
    os.closerange(3, channel)
    os.closerange(channel + 1, 1 << 16)
    log = os.open(job.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if job.cuda_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_devices  # before CUDA initializes
    tmp = job.scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    os.environ.update(HOME=str(job.scratch), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp))
    # No third-party pytest plugins: faster start, and nothing the course did not choose.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import tempfile

    tempfile.tempdir = str(tmp)
    os.chdir(job.scratch)
    import torch
    import torch._dynamo  # noqa: F401 - it rebinds torch attributes on import; see PRELOAD

    torch.set_num_threads(job.threads)
    sandbox.apply_limits(job.limits, gpu=bool(job.cuda_devices))
    sandbox.isolate_network()
    sys.dont_write_bytecode = True
    plugin = RunnerPlugin(job, channel)
    args = [
        str(job.tests_dir),
        "--submission",
        str(job.submission),
        "--rootdir",
        str(job.tests_dir),
        "-c",
        os.devnull,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:debugging",  # it keeps the session's config in a class attribute
        "-p",
        "no:stepwise",
        "--assert=plain",
        "-q",
        "--tb=no",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
    ]
    if job.cuda_devices:
        args += ["--device", "cuda"] if _wants_cuda_option(job) else []
    code = pytest.main(args, plugins=[plugin])
    sys.stdout.flush()
    os._exit(0 if code in (0, 1, 5) else 3)


def _wants_cuda_option(job: Job) -> bool:
    return False  # GPU tests pick CUDA themselves (``train(device=None)``); checks stay on CPU


class RunnerPlugin:
    """Registered as ``autograder_runner``: selects tests, takes verdicts, receives artifacts."""

    def __init__(self, job: Job, fd: int) -> None:
        # pluggy names a plugin passed to pytest.main by its ``__name__``: without this the
        # hidden conftest's get_plugin("autograder_runner") finds nothing and no artifact arrives.
        self.__name__ = PLUGIN_NAME
        self.job = job
        self.fd = fd

    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line("markers", "weight(w): relative weight of a test in its part")
        config.addinivalue_line("markers", "gpu: needs a CUDA device")
        config.addinivalue_line("markers", "slow: slow test")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        parts = set(self.job.parts) if self.job.parts else None
        items[:] = [
            item
            for item in items
            if item.nodeid not in self.job.skip and (parts is None or part_of(item.nodeid) in parts)
        ]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        _run_loop(session, self.job, self.fd)
        return True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        outcome = yield
        _deliver("setup", outcome.exception)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        outcome = yield
        _deliver("call", outcome.exception)

    def record_artifact(self, name: str, data: dict[str, Any]) -> None:
        """Keep ``data`` for the feedback pictures (called by the hidden conftest).

        At most :data:`MAX_ARTIFACT_ITEMS` values of it, and :data:`MAX_ARTIFACTS` per run.
        """
        box = _loop_locals()["box"]
        if box["recorded"] < MAX_ARTIFACTS:
            box["recorded"] += 1
            plain = _plain(data, [MAX_ARTIFACT_ITEMS])
            box["artifacts"].append((_plain_text(name, 100), "".join(_to_json(plain, 0))))


def _loop_locals() -> dict[str, Any]:
    """The locals of the running :func:`_run_loop`, found by walking up the stack.

    Only trusted code reaches them: with the submission's code on the stack, the audit hook
    refuses ``sys._getframe``.
    """
    frame = _getframe(1)
    while frame is not None:
        if frame.f_code is _LOOP_CODE:
            return frame.f_locals
        frame = frame.f_back
    raise RuntimeError("not inside the grader's test loop")


def _deliver(phase: str, exc: BaseException | None) -> None:
    box = _loop_locals()["box"]
    status, message = _verdict(phase, exc, box["student"])
    if phase == "setup" and status == "passed":
        return
    box["verdict"] = (status, message)
    if isinstance(exc, MemoryError) or "can't allocate memory" in message:
        box["flags"].append(f"memory limit reached ({box['memory_mb']} MB)")
    if isinstance(exc, SystemExit):
        box["flags"].append(f"exited the interpreter: sys.exit({_plain_text(repr(exc.code), 40)})")


def _verdict(phase: str, exc: BaseException | None, student: str) -> tuple[str, str]:
    if exc is None:
        return "passed", ""
    skipped = isinstance(exc, pytest.skip.Exception)
    if skipped and not _raised_by_submission(exc, student):
        return "skipped", _message(exc)
    if skipped or isinstance(exc, pytest.xfail.Exception):
        return "failed", "the submission skipped this test (pytest.skip/xfail is not allowed)"
    return ("failed" if phase == "call" else "error"), _message(exc)


def _raised_by_submission(exc: BaseException, student: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(student):
            return True
        tb = tb.tb_next
    return False


def _message(exc: BaseException) -> str:
    """The exception's own message, without traceback or test code (student ``__str__`` safe)."""
    try:
        text = str(exc)
        if not isinstance(exc, AssertionError) or not text:
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not break the verdict
        text = "an exception whose message could not be read"
    return _plain_text(text, MAX_MESSAGE)


def _plain_text(value: object, limit: int) -> str:
    """An exact ``str`` (not a subclass with its own ``__repr__``), at most ``limit`` long."""
    try:
        return str.__getitem__(value, slice(0, limit)) if isinstance(value, str) else "?"
    except BaseException:  # noqa: BLE001
        return "?"


def _plain(value: Any, budget: list[int]) -> Any:
    """``value`` as plain literals (dict/list/str/float/int/bool/None), bounded in size."""
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(value, bool) or value is None:
        return bool(value) if value is not None else None
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    if isinstance(value, str):
        return _plain_text(value, 1000)
    if isinstance(value, dict):
        return {_plain_text(str(k), 100): _plain(v, budget) for k, v in list(value.items())[:100]}
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget) for v in list(value)[:MAX_ARTIFACT_ITEMS]]
    return None


def _unencodable(value: object) -> object:
    raise TypeError(f"not plain data: {type(value).__name__}")  # _plain lets none through


# json's C encoder, bound now (a submission may rebind json.encoder's names later); NaN and
# infinities are kept (json.loads reads them back).
_to_json = c_make_encoder(
    None,  # no circular-reference check: _plain builds trees
    _unencodable,
    encode_basestring_ascii,
    None,  # no indent
    ":",
    ",",
    False,  # sort_keys
    False,  # skipkeys
    True,  # allow_nan
)


def _test_info(item: pytest.Item) -> tuple[str, str, str, float]:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    name = doc.strip().splitlines()[0].strip() if doc.strip() else item.nodeid
    marker = item.get_closest_marker("weight")
    weight = float(marker.args[0]) if marker and marker.args else 1.0
    return item.nodeid, name, part_of(item.nodeid), weight


def _guarded_objects(tests_dir: Path) -> list[tuple[str, object]]:
    """Objects whose attributes a submission must not rebind (checked after every test)."""
    import builtins
    import math

    import numpy
    import torch

    objects: list[tuple[str, object]] = [
        ("builtins", builtins),
        ("math", math),
        ("numpy", numpy),
        ("torch", torch),
        ("torch.Tensor", torch.Tensor),
        ("torch.nn.Module", torch.nn.Module),
        ("torch.nn.functional", torch.nn.functional),
        ("torch.testing", torch.testing),
        ("torch.linalg", torch.linalg),
        ("torch.autograd", torch.autograd),
        ("torch.autograd.functional", torch.autograd.functional),
        ("os", os),
        ("pytest", pytest),
    ]
    tests_root = str(tests_dir.resolve())
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        grader = name.startswith(("_pytest", "pluggy", "autograder."))
        if grader or file.startswith(tests_root):
            objects.append((name, module))
    return objects


class Snapshot:
    """Identities of the attributes of some objects; ``changes()`` names what was rebound.

    Checked after every test, so the common case (nothing changed) is one pass in C over the
    ~6k attributes: the sizes of the namespaces, then their keys and values, in order, against
    flat copies by identity (never ``==``, which a patched object could fake). Any difference,
    a reordering included, falls to the exact comparison by name.
    """

    def __init__(self, objects: list[tuple[str, object]]) -> None:
        self.saved = [(name, obj, dict(vars(obj))) for name, obj in objects]
        self.live = [vars(obj) for _, obj, _ in self.saved]  # live views of the namespaces
        self._remember()

    def _remember(self) -> None:
        """Take the current state as the fast path's reference (it passed the exact check)."""
        self.sizes = list(map(len, self.live))
        self.keys = list(itertools.chain.from_iterable(self.live))
        self.values = list(itertools.chain.from_iterable(d.values() for d in self.live))

    def unchanged(self) -> bool:
        """Whether every attribute is still the object it was (fast, may say False spuriously)."""
        chain = itertools.chain.from_iterable
        return (
            list(map(len, self.live)) == self.sizes
            and not any(map(operator.is_not, chain(self.live), self.keys))
            and not any(map(operator.is_not, chain(d.values() for d in self.live), self.values))
        )

    def changes(self) -> list[str]:
        if self.unchanged():
            return []
        changed = self._compare()
        if not changed:  # e.g. a lazily imported submodule became a package attribute
            self._remember()
        return changed

    def _compare(self) -> list[str]:
        changed = []
        for name, obj, before in self.saved:
            now = vars(obj)
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    changed.append(f"{name}.{key}")
            if isinstance(obj, type):  # a new attribute on a class can shadow an inherited one
                changed.extend(f"{name}.{key}" for key in now if key not in before)
        return changed

    def restore(self) -> None:
        """Put every saved attribute back (and drop ones added to classes)."""
        for _, obj, before in self.saved:
            now = vars(obj)
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    _set(obj, key, value)
            if isinstance(obj, type):
                for key in [k for k in now if k not in before]:
                    type.__delattr__(obj, key)


def _set(obj: object, key: str, value: object) -> None:
    if isinstance(obj, type):
        type.__setattr__(obj, key, value)
    else:
        vars(obj)[key] = value


_MISSING = object()


def _run_loop(session: pytest.Session, job: Job, fd: int) -> None:
    """Handshake, lockdown, pre-imports, then every test; see the module docstring."""
    token = secrets.token_hex(16).encode()
    write, literal, clock = os.write, repr, time.perf_counter  # bound before student code runs
    outbox: list[bytes] = []  # lines that leave with the next send: one write, one wake-up

    def post(*message: object) -> None:
        outbox.append(token + b" " + literal(message).encode("utf-8", "replace") + b"\n")

    def send(*message: object) -> None:
        post(*message)
        data = b"".join(outbox)
        outbox.clear()
        while data:
            data = data[write(fd, data) :]

    box: dict[str, Any] = {"verdict": None, "flags": [], "artifacts": [], "recorded": 0}
    box["student"] = str(job.submission.resolve())
    box["memory_mb"] = job.limits.memory_mb
    items = list(session.items)
    send("hello", [_test_info(item) for item in items])
    # Lockdown: from here on, student code may run.
    snapshot = Snapshot(_guarded_objects(job.tests_dir))
    tests_root = str(job.tests_dir.resolve())
    for name in [
        n
        for n, m in sys.modules.items()
        if (getattr(m, "__file__", "") or "").startswith(tests_root)
    ]:
        del sys.modules[name]  # hidden test modules stay reachable to pytest only
    policy = sandbox.Policy.for_run(
        job.scratch,
        protected=job.protected,
        grader=[Path(sandbox.__file__).parents[1], job.tests_dir],
    )
    user = sandbox.drop_privileges(job.scratch)
    send("note", f"running as {user}" if user else "running as the grader's user")
    sandbox.install_audit_hook(policy, lambda text: send("flag", text))
    parts = []
    for item in items:
        part = part_of(item.nodeid)
        if part not in parts and part not in job.skip_imports:
            parts.append(part)
    tainted: dict[str, str] = {}  # part -> what its module changed at import
    for part in parts:
        send("import", part)
        try:
            importlib.import_module(f"{PACKAGE}.{part}")
            send("imported", part, "")
        except BaseException as exc:  # noqa: BLE001 - SystemExit at import fails only this part
            if isinstance(exc, SystemExit):
                send("flag", f"exited the interpreter: sys.exit at import of {part}.py")
            send("imported", part, _message(exc))
        changed = snapshot.changes()
        if changed:
            tainted[part] = ", ".join(changed[:5])
            send("flag", f"tampering: importing {part}.py changed {tainted[part]}")
            snapshot.restore()
    for index, item in enumerate(items):
        nextitem = items[index + 1] if index + 1 < len(items) else None
        box["verdict"], box["flags"], box["artifacts"] = None, [], []
        send("start", item.nodeid)  # with the previous test's result: the child is between tests
        start = clock()
        try:
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt, pytest.exit, ...
            if box["verdict"] is None:
                box["verdict"] = ("failed", f"the test was interrupted: {_message(exc)}")
        duration = clock() - start  # setup + call + teardown: the test's own cost
        status, message = box["verdict"] or ("failed", "the test gave no verdict")
        for flag in box["flags"]:
            post("flag", f"{flag} in {item.nodeid}")
        changed = snapshot.changes()
        if changed:
            shown = ", ".join(changed[:5])
            post("flag", f"tampering: {shown} changed during {item.nodeid}")
            status, message = "failed", f"the submission changed the grader's libraries ({shown})"
            snapshot.restore()  # the next tests run on the real libraries again
        elif part_of(item.nodeid) in tainted:
            shown = tainted[part_of(item.nodeid)]
            status, message = "failed", f"the submission changed the grader's libraries ({shown})"
        for name, data in box["artifacts"]:
            post("artifact", name, data)
        post("result", item.nodeid, status, message, float(duration))
    send("done")


_LOOP_CODE = _run_loop.__code__
