"""The GPU paths, checked on any host: which GPU each grading harness gets, and that the choice
reaches the sandboxed worker (whose environment starts empty). A CUDA host runs the rest
(``benchmarks/gpu_check.sh``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autograder.config import PACKAGE, Assignment, Limits
from autograder.grading import sandbox
from autograder.grading.remote import Session
from autograder.grading.supervisor import DevicePool, visible_gpus

PROBE = "import os\n\ndef cuda_visible():\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n"


def test_device_pool_spreads_harnesses_over_gpus() -> None:
    pool = DevicePool(["0", "1"])
    first, second, third = pool.acquire(), pool.acquire(), pool.acquire()
    assert {first, second} == {"0", "1"} and third in {"0", "1"}
    pool.release(first)
    assert pool.acquire() == first  # the least busy one
    assert DevicePool([]).acquire() is None  # a CPU host: the environment is left alone


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5,-1")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_the_chosen_gpu_reaches_the_sandboxed_worker(
    assignment: Assignment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = sandbox.choose("auto")
    workspace = tmp_path / "workspace"
    shutil.copytree(assignment.solution_dir / PACKAGE, workspace / PACKAGE)
    (workspace / PACKAGE / "probe.py").write_text(PROBE)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    session = Session(backend, workspace, tmp_path / "base", Limits(test_timeout_s=120))
    try:
        assert session.module("probe").cuda_visible() == "3"
    finally:
        session.close()
