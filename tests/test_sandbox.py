"""The worker's OS sandbox and the data-only protocol, checked from inside a real worker.

A tiny "student" module (``flows/peek.py``) is served by a real sandboxed worker
(:class:`autograder.grading.remote.Session`, bubblewrap backend) and reports what it can see and
do: its uid, the host's files, processes and network, its resource limits. The protocol's decoder
is fed malformed frames and values directly. The command line refuses a backend this host lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from autograder.config import PACKAGE, Limits
from autograder.errors import AutograderError
from autograder.grading import protocol, sandbox
from autograder.grading.remote import Handle, Session, WorkerCrashed
from autograder.grading.sandbox.base import python_roots
from autograder.grading.sandbox.cgroup import worker_chain
from autograder.grading.sandbox.limits import MAX_FILE_BYTES
from autograder.grading.sandbox.space import INODES_PER_MB
from tests.conftest import ASSIGNMENT, REPO, CliRunner

LIMITS = Limits(
    test_timeout_s=60, submission_timeout_s=120, memory_mb=3072, max_processes=32, disk_mb=48
)
NOBODY = 65534
ENV_SECRET = "AUTOGRADER_TEST_HOST_SECRET"

# The "student" module: every function returns plain data describing the worker's world.
PEEK = """
import os, resource, socket, torch

def ids():
    return [os.getuid(), os.geteuid(), os.getgid()]

def visible(paths):
    return [os.path.exists(p) for p in paths]

def listing(path):
    return sorted(os.listdir(path))

def processes():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                found.append([int(pid), handle.read().decode(errors="replace")])
    return found

def limits():
    names = ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NPROC", "RLIMIT_CPU")
    return {n: resource.getrlimit(getattr(resource, n))[0] for n in names}

def connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__

def interfaces():
    return [name for _, name in socket.if_nameindex()]

def write(path):
    try:
        with open(path, "w") as handle:
            handle.write("written by the worker")
        return "written"
    except OSError as exc:
        return type(exc).__name__

def environment():
    return dict(os.environ)

def space(path):
    stat = os.statvfs(path)
    return [stat.f_blocks * stat.f_frsize, stat.f_files]

def fill(path, mb):
    import errno
    written = 0
    try:
        with open(path, "wb") as handle:
            for _ in range(mb):
                handle.write(b"x" * 2**20)
                handle.flush()
                written += 1
    except OSError as exc:
        return [errno.errorcode[exc.errno], written]
    finally:
        os.remove(path)
    return ["written", written]

def spawn():
    import subprocess, sys
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            start_new_session=True).pid

def alive(pid):  # a killed child is a zombie until the worker reaps it (here)
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        os.waitpid(pid, 0)
    return state != "Z"

def segfault():
    import signal
    os.kill(os.getpid(), signal.SIGSEGV)

class LyingTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("__eq__", "eq", "allclose", "equal", "__lt__"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

class LyingFloat(float):
    def __eq__(self, other):
        return True
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    __hash__ = float.__hash__

def liars():
    return (torch.zeros(3).as_subclass(LyingTensor), LyingFloat(0.5), 7, 2.5, True)
"""


def _workspace(root: Path) -> Path:
    """The reference's ``flows/`` (given files included) plus the peek module."""
    shutil.copytree(REPO / "solutions" / ASSIGNMENT / PACKAGE, root / PACKAGE)
    (root / PACKAGE / "peek.py").write_text(PEEK)
    return root


@pytest.fixture(scope="module")
def bwrap() -> sandbox.Backend:
    try:
        return sandbox.choose("bwrap")
    except AutograderError as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")


@pytest.fixture(scope="module")
def out_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the batch's ``--out`` folder: the host has it, the worker must not."""
    folder = tmp_path_factory.mktemp("out")
    (folder / "results.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def peek(bwrap: sandbox.Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Handle]:
    """A handle to ``flows.peek`` in a sandboxed worker (started with a host secret in env)."""
    workspace = _workspace(tmp_path_factory.mktemp("workspace"))
    os.environ[ENV_SECRET] = "host-only"
    session = Session(bwrap, workspace, tmp_path_factory.mktemp("base"), LIMITS)
    try:
        session.start()
    finally:
        del os.environ[ENV_SECRET]
    try:
        yield session.module("peek")
    finally:
        session.close()


# -- the sandbox, seen from inside ------------------------------------------------------------


def test_worker_is_in_its_cgroup(peek: Handle) -> None:
    session = peek._session
    box = session._process.box  # type: ignore[union-attr]
    if box.cgroup.missing:
        pytest.skip(f"no {box.cgroup.missing} cgroup on this host")
    chain = worker_chain(session._process.pid)  # type: ignore[union-attr]
    assert len(chain) == 3 and set(chain) <= set(box.cgroup.pids()), "bwrap, its init, worker"
    memory = box.cgroup.folders["memory"]
    limit = next(
        memory / f for f in ("memory.limit_in_bytes", "memory.max") if (memory / f).exists()
    )
    assert int(limit.read_text()) == LIMITS.memory_mb * 2**20
    cpu = box.cgroup.folders["cpu"]
    quota = (cpu / "cpu.cfs_quota_us").read_text() if (cpu / "cpu.cfs_quota_us").exists() else ""
    quota = quota or (cpu / "cpu.max").read_text().split()[0]
    assert int(quota) == 100_000, "one CPU per job slot (one thread)"


@pytest.mark.parametrize("folder", ["/tmp", "/dev/shm", "/work"])
def test_writable_space_is_capped(peek: Handle, folder: str) -> None:
    size, inodes = peek.space(folder)
    assert size == LIMITS.disk_mb * 2**20
    if folder == "/work":
        assert inodes == LIMITS.disk_mb * INODES_PER_MB
    error, written = peek.fill(f"{folder}/filler", LIMITS.disk_mb + 8)
    assert error == "ENOSPC" and LIMITS.disk_mb - 2 <= written <= LIMITS.disk_mb, written


def test_fonts_are_visible(peek: Handle) -> None:
    expected = [os.path.exists("/etc/fonts/fonts.conf")]
    assert peek.visible(["/etc/fonts/fonts.conf"]) == expected


def test_a_process_left_by_a_test_is_killed_before_the_next(peek: Handle) -> None:
    child = peek.spawn()
    assert peek.alive(child)
    peek._session.end_test()
    assert not peek.alive(child)
    assert any("left running by a test were killed" in f for f in peek._session.flags)
    assert peek.ids() == [NOBODY, NOBODY, NOBODY], "the worker itself lives on"


def test_a_segfault_is_named(bwrap: sandbox.Backend, tmp_path: Path) -> None:
    session = Session(bwrap, _workspace(tmp_path / "ws"), tmp_path / "base", LIMITS)
    try:
        with pytest.raises(WorkerCrashed, match=r"crashed \(SIGSEGV\)"):
            session.module("peek").segfault()
    finally:
        session.close()


def test_worker_runs_as_nobody(peek: Handle) -> None:
    assert peek.ids() == [NOBODY, NOBODY, NOBODY]


def test_host_files_are_invisible(peek: Handle, out_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-marker"
    marker.write_text("host")
    hidden = REPO / "tests" / "hidden" / ASSIGNMENT / "test_maf.py"
    solution = REPO / "solutions" / ASSIGNMENT / PACKAGE / "maf.py"
    paths = [REPO, hidden, solution, out_folder, out_folder / "results.json", marker, "/root/.ssh"]
    assert peek.visible([str(p) for p in paths]) == [False] * len(paths)
    # Only the way down to a Python install that lives under /tmp (a venv there) is seen.
    installs = {r.relative_to("/tmp").parts[0] for r in python_roots() if r.is_relative_to("/tmp")}
    assert peek.listing("/tmp") == sorted(installs), "the host's /tmp must not show through"
    assert peek.listing("/work") == ["submission", "tmp"], "only the scratch folder is writable"
    assert "main" not in peek.listing("/")  # the repository's folder name, from the root


def test_only_sandbox_processes_are_visible(peek: Handle) -> None:
    seen = peek.processes()
    assert len(seen) <= 3, f"only bwrap and the worker: {seen}"
    assert all(pid < 10 for pid, _ in seen), "pids come from a fresh PID namespace"
    strangers = [
        cmdline
        for _, cmdline in seen
        if "/grader/worker.py" not in cmdline and "bwrap" not in cmdline.split("\0")[0]
    ]
    assert strangers == [], "only the sandbox's own processes are visible"


def test_rlimits_are_set(peek: Handle) -> None:
    assert peek.limits() == {
        "RLIMIT_AS": LIMITS.memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": MAX_FILE_BYTES,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": LIMITS.max_processes,
        "RLIMIT_CPU": int(LIMITS.submission_timeout_s) + 60,
    }


def test_no_network(peek: Handle) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        assert peek.connect(port) != "connected"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the worker reached the host's loopback
    assert peek.interfaces() == ["lo"], "a private network namespace has only its own loopback"


def test_writes_stay_in_scratch(peek: Handle) -> None:
    assert peek.write("/work/tmp/mine.txt") == "written"
    assert peek.write(sys.executable + "-evil") in ("OSError", "PermissionError")
    assert peek.write("/usr/evil") in ("OSError", "PermissionError")


def test_environment_is_cleared(peek: Handle) -> None:
    env = peek.environment()
    assert ENV_SECRET not in env
    assert env["HOME"] == "/work" and env["AUTOGRADER_SANDBOX"] == "bwrap"


def test_returned_values_come_back_as_exact_types(peek: Handle) -> None:
    tensor, lying_float, number, real, flag = peek.liars()
    assert type(tensor) is torch.Tensor, "a tensor subclass decodes to a plain tensor"
    assert not bool(tensor.eq(torch.ones(3)).all()), "its lying comparisons stayed behind"
    assert isinstance(lying_float, Handle), "a float subclass is not data: it stays a handle"
    assert (type(number), type(real), type(flag)) == (int, float, bool)


def test_handles_are_not_iterable(peek: Handle) -> None:
    with pytest.raises(TypeError, match="not data"):
        list(peek)
    with pytest.raises(TypeError, match="not data"):
        len(peek.ids)


# -- the protocol -----------------------------------------------------------------------------


def _frame(header: bytes, *blobs: bytes) -> tuple[dict, list[bytes]]:
    """Feed one raw frame through a real pipe into ``read_frame``."""
    read, write = os.pipe()
    try:
        os.write(write, struct.pack(">I", len(header)) + header + b"".join(blobs))
        os.close(write)
        write = -1
        return protocol.read_frame(read, deadline=None)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def _no_handles(*args: object) -> None:
    raise AssertionError("no handle expected")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"blobs": [-1]}', "malformed"),
        (b'{"blobs": "x"}', "malformed"),
        (json.dumps({"blobs": [protocol.MAX_BLOB_BYTES + 1]}).encode(), "oversized"),
        (json.dumps({"blobs": [0] * (protocol.MAX_BLOBS + 1)}).encode(), "oversized"),
    ],
)
def test_malformed_frames_are_refused(header: bytes, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        _frame(header)


def test_oversized_header_is_refused_before_reading_it() -> None:
    read, write = os.pipe()
    try:
        os.write(write, struct.pack(">I", protocol.MAX_HEADER_BYTES + 1))
        with pytest.raises(protocol.ProtocolError, match="limit"):
            protocol.read_frame(read, deadline=None)
    finally:
        os.close(read)
        os.close(write)


def test_truncated_frame_is_a_closed_channel() -> None:
    with pytest.raises(protocol.ChannelClosed):
        _frame(b'{"blobs": [16]}', b"short")


def test_a_good_frame_round_trips() -> None:
    blobs: list[bytes] = []
    tree = protocol.encode({"x": torch.arange(4.0), "n": (1, 2.5, "s", None)}, blobs)
    header = json.dumps({"ok": tree, "blobs": [len(b) for b in blobs]}).encode()
    got, got_blobs = _frame(header, *blobs)
    value = protocol.decode(got["ok"], got_blobs, _no_handles)
    assert torch.equal(value["x"], torch.arange(4.0)) and value["n"] == (1, 2.5, "s", None)


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        ({"$tensor": ["float32", [3], 0]}, "with 8 bytes"),  # 3 floats need 12 bytes
        ({"$tensor": ["float32", [3], 5]}, "missing data"),
        ({"$tensor": ["complex64", [1], 0]}, "malformed tensor"),
        ({"$tensor": ["float32", [-2], 0]}, "malformed tensor shape"),
        ({"$pickle": "gASV"}, "unknown tag"),
        ({"a": 1, "b": 2}, "unexpected dict"),
        ({"$handle": ["1", [], "x"]}, "malformed handle"),
        ({"$dict": [[1, 2]]}, "malformed dict entry"),
        ("x" * (protocol.MAX_STRING + 1), "limit"),
    ],
)
def test_malformed_values_are_refused(tree: object, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.decode(tree, [b"\0" * 8], _no_handles)


def test_deep_nesting_is_refused() -> None:
    tree: object = 1
    for _ in range(protocol.MAX_DEPTH + 2):
        tree = [tree]
    with pytest.raises(protocol.ProtocolError, match="too deep"):
        protocol.decode(tree, [], _no_handles)
    with pytest.raises(protocol.ProtocolError, match="too deep"):
        protocol.encode(tree, [])


def test_subclasses_decode_as_exact_types() -> None:
    class Sneaky(torch.Tensor):
        pass

    class Liar(float):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = float.__hash__

    blobs: list[bytes] = []
    tree = protocol.encode(torch.ones(2, 2).as_subclass(Sneaky), blobs)
    decoded = protocol.decode(tree, blobs, _no_handles)
    assert type(decoded) is torch.Tensor and torch.equal(decoded, torch.ones(2, 2))
    with pytest.raises(protocol.ProtocolError, match="cannot send a Liar"):
        protocol.encode(Liar(1.0), [])  # not data: without a handle maker, refused
    number = protocol.decode(json.loads(json.dumps(1.5)), [], _no_handles)
    assert type(number) is float


# -- choosing a backend -----------------------------------------------------------------------


def test_no_sandbox_flags_every_result(tmp_path: Path) -> None:
    session = Session(sandbox.choose("none"), _workspace(tmp_path / "w"), tmp_path, LIMITS)
    try:
        assert session.flags == ["no-sandbox"]
        assert session.module("peek").environment()["AUTOGRADER_SANDBOX"] == "none"
    finally:
        session.close()


def test_grade_refuses_an_unavailable_backend(autograder_cli: CliRunner, tmp_path: Path) -> None:
    problem = sandbox.UserBackend().unavailable()
    if problem is None:
        pytest.skip("the 'user' backend works on this host: nothing to refuse")
    done = autograder_cli(
        "grade",
        ASSIGNMENT,
        REPO / "solutions" / ASSIGNMENT,
        "--out",
        tmp_path / "out",
        "--sandbox",
        "user",
        "--db",
        f"sqlite:///{tmp_path / 'gradebook.db'}",
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("autograder: error: "), done.stderr
    assert problem in lines[0] and "--sandbox none" in lines[0] and "Fix:" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "gradebook.db").exists()


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(AutograderError, match="unknown sandbox 'docker'"):
        sandbox.choose("docker")


# ---------------------------------------------------------------------------------------------
# The notebook stage's kernel: the same sandbox, through a kernel spec.

KERNEL_PROBE = """
import json, os, socket
def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
print(json.dumps({
    "uid": os.getuid(),
    "here": sorted(os.listdir(".")),
    "visible": [os.path.exists(p) for p in %(paths)r],
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "host_port": can_connect(%(port)d),
}))
"""


def test_notebook_kernel_sees_only_its_folder(tmp_path: Path) -> None:
    """nbgrader's kernel starts inside bubblewrap: the folder the notebook runs in, nothing else
    (not the gradebook, the source notebook or the course files), and no network."""
    pytest.importorskip("jupyter_client")
    from jupyter_client import KernelManager

    from autograder.grading.sandbox.kernel import sandboxed_kernel

    if sandbox.BubblewrapBackend().unavailable():
        pytest.skip("bubblewrap is not available here")
    course = tmp_path / "nbgrader"
    workdir = course / "autograded" / "alice" / "normalizing_flows"
    workdir.mkdir(parents=True)
    (workdir / "explore.ipynb").write_text("{}")
    (course / "gradebook.db").write_text("grades")
    (course / "source").mkdir()
    (course / "source" / "explore.ipynb").write_text("hidden tests")
    env, manager = sandboxed_kernel(workdir, course / "kernel")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    secrets = [course / "gradebook.db", course / "source" / "explore.ipynb", REPO / "solutions"]
    code = KERNEL_PROBE % {"paths": [str(p) for p in secrets], "port": listener.getsockname()[1]}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    km = KernelManager(kernel_name="python3", **manager)
    try:
        km.start_kernel(cwd=str(workdir))
        client = km.client()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        printed: list[str] = []

        def keep(message: dict) -> None:
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"])

        client.execute_interactive(code, timeout=60, output_hook=keep)
        client.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
        listener.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seen = json.loads("".join(printed))
    assert seen["uid"] == NOBODY
    assert seen["here"] == ["explore.ipynb"]
    assert seen["visible"] == [False, False, False], dict(
        zip(map(str, secrets), seen["visible"], strict=True)
    )
    assert seen["interfaces"] == ["lo"] and seen["host_port"] is False


def test_a_reader_that_stops_reading_cannot_hold_the_harness() -> None:
    """Requests are written against the test's deadline: a worker that stops reading its
    channel costs that test (a timeout), not the harness's life."""
    import time

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        with pytest.raises(protocol.ChannelTimeout):
            protocol.write_frame(write_end, {"op": "call"}, [bytes(4 << 20)], time.monotonic() + 1)
    finally:
        os.close(read_end)
        os.close(write_end)


USER_PEEK = """
import os, resource, socket
def look(paths):
    readable = []
    for path in paths:
        try:
            os.listdir(path)
            readable.append(path)
        except OSError:
            pass
    names = sorted(name for _, name in socket.if_nameindex())
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    return [os.getuid(), os.getgroups(), readable, names, nproc]
"""


def test_user_backend_from_inside(assignment, tmp_path: Path) -> None:
    """The fallback backend, where this host allows it (root, the course closed to others, the
    Python install open): a dedicated uid without groups, no course files, no network."""
    backend = sandbox.UserBackend()
    problem = backend.unavailable()
    if problem:
        pytest.skip(f"the user backend is not available here: {problem}")
    workspace = tmp_path / "workspace"
    shutil.copytree(assignment.solution_dir / PACKAGE, workspace / PACKAGE)
    (workspace / PACKAGE / "peek.py").write_text(USER_PEEK)
    base = Path(tempfile.mkdtemp(prefix="user-backend-"))  # pytest's tmp_path is closed to others
    session = Session(backend, workspace, base, LIMITS)
    try:
        secret = [str(REPO / "tests" / "hidden"), str(REPO / "solutions")]
        uid, groups, readable, interfaces, nproc = session.module("peek").look(secret)
    finally:
        session.close()
        shutil.rmtree(base, ignore_errors=True)
    assert uid == sandbox.BASE_UID and groups == [] and readable == []
    assert interfaces == ["lo"] and nproc == LIMITS.max_processes
