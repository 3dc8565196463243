"""Figures for Gradescope's leaderboard: measured by a hidden test, kept only if it passed.

A hidden test reports a figure through the hidden conftest's ``leaderboard(name, value,
order="asc")`` fixture (:func:`recorder`). Gradescope's order: ``"asc"`` ranks the lowest value
first (an NLL, bits/dim), ``"desc"`` the highest (Gradescope's default when ``order`` is left
out, so every entry written here names its order).

Where a figure comes from decides whether it can be trusted:

- it is computed in the harness, by the hidden test, from data; only a number (a Python or
  numpy number, or a one-element tensor the harness holds) is taken, never a worker handle, so
  nothing the student's code returns can add an entry, name one or choose its value directly;
- the harness holds a test's figures until its verdict and sends them only when the test
  passed: the test's checks (held-out points among decoys, the density's mass, the flow checks)
  are what make its figure a figure of a correct model, and a cheat that fails them gets no
  entry; a test that did not run (a part the submission lacks) reports nothing;
- a figure that is not finite is left out (JSON has no NaN, and Gradescope would not rank it).

``results.json`` carries them as Gradescope's top-level ``leaderboard`` list
(``{"name", "value", "order"}``); the staff's ``grading.json`` keeps them with the test that
measured each (:class:`~autograder.grading.models.LeaderboardEntry`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from autograder.grading.models import LeaderboardEntry

ORDERS = ("asc", "desc")
MAX_NAME = 100  # characters of an entry's name
MAX_ENTRIES = 16  # per submission: a leaderboard is a few columns, not a log

Recorder = Callable[..., None]


def checked(name: str, value: Any, order: str = "asc") -> tuple[str, float, str] | None:
    """``(name, value, order)`` as the leaderboard takes it, or ``None`` for a value that is not
    finite. A wrong name, order or value type is the hidden test's bug: it raises."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise ValueError(f"leaderboard: a name is a non-empty string of <= {MAX_NAME} characters")
    if order not in ORDERS:
        raise ValueError(f"leaderboard {name!r}: order must be 'asc' or 'desc', got {order!r}")
    number = _number(name, value)
    return (name.strip(), number, order) if math.isfinite(number) else None


def _number(name: str, value: Any) -> float:
    """A number computed in the harness; a worker handle (or anything else) is refused."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    import torch  # the harness has it; not needed to format results.json

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu().item())
    raise TypeError(
        f"leaderboard {name!r}: the value must be a number computed in the harness, "
        f"got {type(value).__name__}"
    )


def recorder(plugin: Any) -> Recorder:
    """The hidden conftest's ``leaderboard`` fixture: checks each figure and hands it to the
    grader's harness plugin (``plugin.record_leaderboard``), or, under plain pytest
    (``plugin`` None), checks it and drops it."""

    def leaderboard(name: str, value: Any, order: str = "asc") -> None:
        entry = checked(name, value, order)
        if entry is not None and plugin is not None:
            plugin.record_leaderboard(*entry)

    return leaderboard


def from_message(message: dict[str, Any], tests: dict[str, tuple]) -> list[LeaderboardEntry]:
    """The supervisor's reading of a harness ``leaderboard`` line (checked again; one naming a
    test the harness did not announce, or malformed, gives nothing)."""
    nodeid = message.get("nodeid")
    try:
        entry = checked(message["name"], message["value"], message["order"])
    except (KeyError, TypeError, ValueError):
        return []
    if entry is None or nodeid not in tests:
        return []
    return [LeaderboardEntry(*entry, nodeid=nodeid, part=tests[nodeid][1])]


def gradescope_entries(entries: Iterable[LeaderboardEntry]) -> list[dict[str, Any]]:
    """Gradescope's ``leaderboard`` list: one entry per name (the last one measured), in the
    order the names were first reported, at most :data:`MAX_ENTRIES`; non-finite values left
    out again (a stored run is read back from JSON)."""
    kept: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry.value, (int, float)) and math.isfinite(entry.value):
            kept[entry.name] = {"name": entry.name, "value": entry.value, "order": entry.order}
    return list(kept.values())[:MAX_ENTRIES]
