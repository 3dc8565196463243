"""``run_autograder`` under Gradescope's container limits, emulated with a cgroup.

Gradescope runs each submission in a Docker container whose default limits are 768 MB of memory
and half a virtual CPU. This script builds the autograder zip, runs its ``setup.sh`` once in a
fake ``/autograder`` (as ``tests/test_gradescope.py`` does, with the same helpers), uploads the
reference with its solved notebook, and runs ``run_autograder`` in a fresh cgroup per setting:
nested under this process's own cgroup (``/proc/self/cgroup``; v1 ``memory`` + ``cpu``
controllers, or v2), with ``memory.limit_in_bytes`` (and the same swap+memory limit, so nothing
spills to swap) and a CFS quota of ``cpus`` CPUs. For each it reports the result (score, flags),
the cgroup's peak memory (``memory.max_usage_in_bytes`` / ``memory.peak``), OOM kills and wall
time, and writes the table to ``benchmarks/gradescope_limits.md``.

Needs root (it makes cgroups). ``--python`` picks the venv's interpreter (default: a pyenv
Python 3.10, Gradescope's version, else this one). Run from the repository root::

    python benchmarks/gradescope_limits.py [--python PATH] [--limits 768:0.5 3072:1 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder.config import load_course  # noqa: E402
from autograder.gradescope import write_gradescope_zip  # noqa: E402
from tests.test_gradescope import (  # noqa: E402
    gradescope_env,
    python310,
    setup_gradescope,
    upload_reference,
)

DEFAULT_LIMITS = ("768:0.5", "1536:1", "3072:1")
RUN_TIMEOUT_S = 3600
PERIOD_US = 100_000


@dataclass
class Measured:
    memory_mb: int
    cpus: float
    score: float | None
    flags: list[str]
    peak_mb: float
    oom_kills: int
    wall_s: float


class Group:
    """A fresh cgroup below this process's own, with a memory and a CPU limit (v1 or v2)."""

    def __init__(self, name: str, memory_mb: int, cpus: float) -> None:
        own = dict(
            (line.split(":", 2)[1], line.split(":", 2)[2].strip())
            for line in Path("/proc/self/cgroup").read_text().splitlines()
        )
        limit, quota = str(memory_mb << 20), str(int(cpus * PERIOD_US))
        if "memory" in own:  # cgroup v1: one folder per controller
            self.memory = Path("/sys/fs/cgroup/memory", own["memory"].lstrip("/"), name)
            self.cpu = Path("/sys/fs/cgroup/cpu", own.get("cpu", "/").lstrip("/"), name)
            self.dirs = [self.memory, self.cpu]
            for folder in self.dirs:
                folder.mkdir()
            (self.memory / "memory.limit_in_bytes").write_text(limit)
            swap = self.memory / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(limit)
            (self.cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.cpu / "cpu.cfs_quota_us").write_text(quota)
            self.v2 = False
        else:  # cgroup v2: one folder; the parent must delegate memory and cpu
            self.memory = self.cpu = Path("/sys/fs/cgroup", own[""].lstrip("/"), name)
            self.dirs = [self.memory]
            self.memory.mkdir()
            (self.memory / "memory.max").write_text(limit)
            (self.memory / "memory.swap.max").write_text("0")
            (self.memory / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            self.v2 = True

    def wrap(self, command: list[str]) -> list[str]:
        """``command``, started inside this group (the shell joins it, then execs)."""
        joins = " ".join(f"echo $$ > {d}/cgroup.procs;" for d in self.dirs)
        return ["sh", "-c", f'{joins} exec "$@"', "sh", *command]

    def peak_mb(self) -> float:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        path = self.memory / name
        return int(path.read_text()) / 2**20 if path.exists() else float("nan")

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.memory / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for folder in self.dirs:
            for _ in range(50):  # the last processes may take a moment to leave
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.2)


def measure(root: Path, python: Path, memory_mb: int, cpus: float) -> Measured:
    results = root / "results" / "results.json"
    results.unlink(missing_ok=True)
    group = Group(f"gradescope-{memory_mb}-{int(cpus * 100)}", memory_mb, cpus)
    try:
        started = time.monotonic()
        done = subprocess.run(
            group.wrap([str(root / "run_autograder")]),
            cwd=root,
            env=gradescope_env(root, python),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        wall = time.monotonic() - started
        peak, kills = group.peak_mb(), group.oom_kills()
    finally:
        group.remove()
    data = json.loads(results.read_text()) if results.is_file() else {}
    if not data:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    flags = data.get("extra_data", {}).get("flags", ["no results.json"])
    return Measured(memory_mb, cpus, data.get("score"), flags, peak, kills, wall)


def table(rows: list[Measured], maximum: float, python: str) -> str:
    lines = [
        f"`run_autograder` on the reference with its solved notebook (maximum {maximum:g} with",
        f"the written answers pending); venv: {python}. Each row a fresh cgroup.",
        "",
        "| container limits | score | flags | peak memory (cgroup) | OOM kills | wall time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flags = "; ".join(r.flags)[:80] or "none"
        lines.append(
            f"| {r.memory_mb} MB, {r.cpus:g} CPU | {r.score} | {flags} | {r.peak_mb:.0f} MB "
            f"| {r.oom_kills} | {r.wall_s:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=None)
    parser.add_argument("--limits", nargs="+", default=list(DEFAULT_LIMITS), help="MB:CPUS")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gradescope_limits.md")
    args = parser.parse_args()
    python = args.python or python310() or Path(sys.executable)
    course = load_course(REPO)
    assignment = course.assignment("normalizing_flows")
    with tempfile.TemporaryDirectory(prefix="gradescope-limits-") as tmp:
        root = Path(tmp) / "autograder"
        archive = write_gradescope_zip(assignment, Path(tmp) / "autograder.zip")
        version, setup_s = setup_gradescope(archive, root, python)
        print(f"setup.sh: {setup_s:.0f} s; venv: {version}", flush=True)
        upload_reference(assignment, root)
        rows = []
        for spec in args.limits:
            memory, cpus = spec.split(":")
            rows.append(measure(root, python, int(memory), float(cpus)))
            print(rows[-1], flush=True)
    maximum = sum(assignment.parts.values()) + assignment.notebook.points
    text = table(rows, maximum, version)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
