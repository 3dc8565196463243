"""Checking what came back from the worker: values are data, validated before any use.

Every function raises :class:`AssertionError` with a message in the lesson's terms (the test
fails, and the student reads the message). NaN or inf in a flow's output or log-determinant
fails first: a NaN compares as "no difference" and "no dependency", so a check that let one
through would credit a broken layer.
"""

from __future__ import annotations

from typing import Any

import torch

from autograder.grading.remote import Handle


def kind(value: Any) -> str:
    """What ``value`` is, for a message (``a tuple of 3``, ``an object (coupling.X)``)."""
    if isinstance(value, Handle):
        return f"an object ({value._label})"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__


def shape_or_kind(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else kind(value)


def expect_finite(value: torch.Tensor, what: str) -> torch.Tensor:
    """``value`` if every entry is finite, else a failure naming how many are not."""
    bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
    assert bad == 0, (
        f"{what} should be finite for finite inputs; it has {bad} inf/nan value(s) of "
        f"{value.numel()}"
    )
    return value


def expect_tensor(
    value: Any, what: str, shape: tuple[int, ...] | None = None, *, finite: bool = False
) -> torch.Tensor:
    """``value`` if it is a tensor (of ``shape``; all finite with ``finite``), else a failure."""
    assert isinstance(value, torch.Tensor), f"{what} should be a tensor, got {kind(value)}"
    if shape is not None:
        assert tuple(value.shape) == tuple(shape), (
            f"{what} should have shape {tuple(shape)}, got {tuple(value.shape)}"
        )
    return expect_finite(value, what) if finite else value


def expect_pair(
    out: Any, what: str, batch: int, features: int, *, finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow's ``(output (batch, features), log|det J| (batch,))``, checked (finite first)."""
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{what} should return a pair (output, log|det J|), got {kind(out)}"
    )
    y = expect_tensor(out[0], f"the output of {what}", (batch, features))
    log_det = out[1]
    assert isinstance(log_det, torch.Tensor) and tuple(log_det.shape) == (batch,), (
        f"{what} on a batch of {batch} should return one log|det J| per sample, shape "
        f"({batch},); got {shape_or_kind(log_det)}"
    )
    if finite:
        expect_finite(y, f"the output of {what}")
        expect_finite(log_det, f"log|det J| of {what}")
    return y, log_det


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float64; NaN where either has a NaN, so that both ``error < tol`` and
    ``change > moved`` are false for it (a NaN is neither "equal" nor "changed")."""
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
