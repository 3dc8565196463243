"""The cost of the trust boundary: starting a sandboxed worker and talking to it.

Figures (each the median of several repeats, on the reference submission):

- **sandbox start**: from ``Session.start()`` to the worker's greeting, which includes the
  worker's cold ``import torch``, for bubblewrap against a plain child process (``none``);
- **round trip**: one small call (``layer.forward`` on a 4 x 4 batch) harness -> worker -> harness;
- **tensor round trip**: ``forward`` on a 256 x 4096 float64 batch (8 MiB each way);
- **containment**: what each worker start and stop adds for its cgroup (memory, cpu, pids:
  made, limits written, removed) and its capped scratch filesystem (tmpfs mounted, the
  submission copied in, unmounted), measured apart from the worker's start.

The grader's overhead per submission beyond the test bodies is measured end to end by
:mod:`grading` (from ``grading.json``).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from report import Row

from autograder.config import Limits
from autograder.grading import remote
from autograder.grading.sandbox import choose
from autograder.grading.sandbox.cgroup import WorkerCgroup
from autograder.grading.sandbox.space import mount_scratch, unmount

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "normalizing_flows"
START_TARGET_S = 1.5  # issue 8: overhead per submission, the worker's cold import included


def _session(backend: str, base: Path) -> remote.Session:
    return remote.Session(choose(backend), SOLUTION, base, Limits(test_timeout_s=120))


def start_seconds(backend: str, repeats: int) -> float:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(backend, Path(tmp))
        try:
            for _ in range(repeats):
                began = time.perf_counter()
                session.start()
                times.append(time.perf_counter() - began)
        finally:
            session.close()
    return statistics.median(times)


def round_trips(backend: str, calls: int) -> tuple[float, float]:
    """Median seconds of a small call and of an 8 MiB-each-way call."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(backend, Path(tmp))
        try:
            coupling = session.module("coupling")
            small = coupling.AffineCoupling(torch.tensor([1.0, 0.0, 1.0, 0.0]), 8, 1)
            z = torch.randn(4, 4)
            wide = coupling.AffineCoupling((torch.arange(4096) % 2).double(), 8, 1).double()
            big = torch.randn(256, 4096, dtype=torch.float64)
            return _median_call(small.forward, z, calls), _median_call(wide.forward, big, 20)
        finally:
            session.close()


def _median_call(method: remote.Handle, x: torch.Tensor, calls: int) -> float:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        method(x)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def containment_ms(repeats: int) -> tuple[float, float]:
    """Median milliseconds of (a worker's cgroup made and removed, its capped scratch
    filesystem mounted with the submission copied in and unmounted)."""
    limits = Limits()
    cgroups, mounts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(repeats):
            began = time.perf_counter()
            cgroup = WorkerCgroup(limits.memory_mb, 1.0, limits.max_processes)
            cgroup.remove()
            cgroups.append(time.perf_counter() - began)
            scratch = Path(tmp) / f"scratch-{index}"
            shutil.copytree(SOLUTION / "flows", scratch / "submission" / "flows")
            began = time.perf_counter()
            if mount_scratch(scratch, limits.disk_mb):
                unmount(scratch)
                mounts.append(time.perf_counter() - began)
    return statistics.median(cgroups) * 1e3, statistics.median(mounts or [float("nan")]) * 1e3


def run(quick: bool) -> list[Row]:
    repeats, calls = (2, 50) if quick else (5, 1000)
    bwrap_start = start_seconds("bwrap", repeats)
    plain_start = start_seconds("none", repeats)
    small_b, big_b = round_trips("bwrap", calls)
    small_n, big_n = round_trips("none", calls)
    cgroup_ms, mount_ms = containment_ms(repeats * 10)
    met = "met" if bwrap_start < START_TARGET_S else "missed"
    return [
        Row("sandbox", "worker start (cold import torch)", bwrap_start, plain_start,
            "no sandbox", "s", f"< {START_TARGET_S} s", met),
        Row("sandbox", "round trip, 4 x 4 forward", small_b * 1e3, small_n * 1e3,
            "no sandbox", "ms"),
        Row("sandbox", "round trip, 256 x 4096 float64 forward", big_b * 1e3, big_n * 1e3,
            "no sandbox", "ms"),
        Row("sandbox", "worker's cgroup made and removed", cgroup_ms, bwrap_start * 1e3,
            "worker start", "ms"),
        Row("sandbox", "capped scratch tmpfs mounted, filled, unmounted", mount_ms,
            bwrap_start * 1e3, "worker start", "ms"),
    ]  # fmt: skip
