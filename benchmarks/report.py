"""Rows of the benchmark table, the table itself, and a description of the machine."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Row:
    """One measured figure beside its peer from the same run.

    ``ratio`` is ``ours / peer``; ``verdict`` says whether the issue's target for this figure
    (``target``, empty when the issue sets none) is met.
    """

    section: str
    metric: str
    ours: float
    peer: float
    peer_name: str
    unit: str
    target: str = ""
    verdict: str = ""

    @property
    def ratio(self) -> float:
        if self.peer == 0 or math.isnan(self.peer) or math.isnan(self.ours):
            return math.nan
        return self.ours / self.peer


def median(values: Iterable[float]) -> float:
    """The median; NaN when there are no values or one is NaN (a run that could not be measured)."""
    values = list(values)
    return statistics.median(values) if values and not any(map(math.isnan, values)) else math.nan


def verdict(met: bool, miss: str) -> str:
    """``"met"``, or ``"missed by ..."`` with the amount."""
    return "met" if met else f"missed by {miss}"


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    digits = 3 if unit == "nats" else (2 if abs(value) < 100 else 0)
    return f"{value:.{digits}f}"


HEADER = ("section", "metric", "ours", "peer", "ours/peer", "target", "verdict")


def table_lines(rows: Sequence[Row]) -> list[str]:
    """A Markdown table (readable as plain text too): one line per row."""
    cells = [HEADER] + [
        (
            row.section,
            row.metric,
            f"{_number(row.ours, row.unit)} {row.unit}",
            f"{_number(row.peer, row.unit)} ({row.peer_name})",
            "n/a" if math.isnan(row.ratio) else f"{row.ratio:.2f}x",
            row.target,
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return [line(cells[0]), line(["-" * w for w in widths])] + [line(c) for c in cells[1:]]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown CPU").strip()


def machine_lines(torch_threads: int, device: str) -> list[str]:
    """Date, CPU, cores, the accelerator if used, and the versions that shape the figures."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("torch", "zuko", "normflows", "nbgrader")
    )
    return [
        f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine: {_cpu_model()}, {cores} core(s) usable (nproc), GPU: {gpu}",
        f"load average at start: {load}",
        f"python {sys.version.split()[0]}, {versions}",
        f"torch default threads: {torch_threads}; training figures on device: {device}",
    ]
