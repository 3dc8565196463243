"""Wall time of the public self-checks, as a student runs them: ``pytest -q`` in the folder.

The reference folder (``solutions/normalizing_flows``) stands in for a finished student copy:
same tests, same ``pytest.ini``. Each run is a fresh interpreter (torch's import included), as
for a student; the figure is the median of a few runs, against the issue's target.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

from report import Row, median, verdict

SOLUTION = Path(__file__).resolve().parents[1] / "solutions" / "normalizing_flows"
TARGET_S = 15.0  # issue 5: the public self-checks under 15 s


def self_check_seconds() -> float:
    """One run's wall time; NaN when the self-checks fail (the reference must pass them)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=SOLUTION,
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - start if done.returncode == 0 else math.nan


def run(quick: bool) -> list[Row]:
    seconds = median(self_check_seconds() for _ in range(1 if quick else 3))
    return [
        Row(
            "self-checks", "public self-checks, pytest -q on the reference (s)", seconds,
            TARGET_S, "target", "s", f"< {TARGET_S:.0f} s",
            "self-checks failed" if math.isnan(seconds)
            else verdict(seconds < TARGET_S, f"{seconds - TARGET_S:.1f} s"),
        )
    ]  # fmt: skip
