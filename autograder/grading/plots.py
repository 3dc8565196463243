"""Feedback pictures: what the student's own trained flows learned.

The training tests record, per model, ``"<model>_density"`` (``log p_X`` on a grid over
``extent``, the data and samples drawn with ``x = f(z)``, ``z ~ p_Z``) and ``"<model>_losses"``
(the NLL of every step). Each model becomes one PNG: the learned density ``exp(log p_X(x))``,
the data beside the samples, and the loss curve. matplotlib runs with the Agg backend: no
display is needed, and only this module imports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from autograder.grading import atomic  # noqa: E402
from autograder.grading.models import Artifact  # noqa: E402

# The models the training tests record (`density_artifacts` in the hidden test_train.py);
# one picture each.
EXPECTED_MODELS = ("RealNVP", "MAF")
_KINDS = ("density", "losses")


@dataclass
class Pictures:
    """The PNG per model that could be drawn, and a note for each one that could not."""

    images: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def group_artifacts(artifacts: list[Artifact]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"MAF": {"density": {...}, "losses": {...}}}`` from ``"<model>_<kind>"`` names."""
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for artifact in artifacts:
        model, _, kind = artifact.name.rpartition("_")
        if model and kind in _KINDS:
            models.setdefault(model, {})[kind] = artifact.data
    return models


def draw_pictures(artifacts: list[Artifact], dest: Path) -> Pictures:
    """Write ``dest/<model>.png`` for every model with a recorded density or loss curve.

    A model that recorded nothing (e.g. the train part broke) or whose data cannot be drawn
    gets a note for the feedback instead of a picture; this never raises for bad data.
    """
    pictures = Pictures()
    recorded = group_artifacts(artifacts)
    for model in [*EXPECTED_MODELS, *sorted(set(recorded) - set(EXPECTED_MODELS))]:
        kinds = recorded.get(model, {})
        if not kinds:
            pictures.notes[model] = (
                f"no picture of your {model}: the training tests recorded no density or loss "
                "curve for it (see the train part's results above)"
            )
            continue
        try:
            pictures.images[model] = _draw_model(model, kinds, dest / f"{_slug(model)}.png")
        except (KeyError, TypeError, ValueError) as exc:
            pictures.notes[model] = (
                f"no picture of your {model}: its recorded data is unusable ({exc})"
            )
            continue
        missing = [k for k in _KINDS if k not in kinds]
        if missing:
            pictures.notes[model] = f"your {model} recorded no {' or '.join(missing)}"
    return pictures


def _draw_model(model: str, kinds: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, (ax_density, ax_points, ax_loss) = plt.subplots(1, 3, figsize=(13.5, 4.2))
    try:
        if "density" in kinds:
            _draw_density(ax_density, ax_points, kinds["density"])
        else:
            for ax in (ax_density, ax_points):
                _empty(ax, "no density recorded")
        if "losses" in kinds:
            _draw_losses(ax_loss, kinds["losses"])
        else:
            _empty(ax_loss, "no loss curve recorded")
        fig.suptitle(f"{model}: what your flow learned")
        # Fixed margins, not tight_layout: its extra layout pass doubled the drawing time, which
        # every graded submission pays.
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.12, top=0.84, wspace=0.18)
        _save_atomic(fig, path)
    finally:
        plt.close(fig)
    return path


def _draw_density(ax_density: Any, ax_points: Any, data: dict[str, Any]) -> None:
    xmin, xmax, ymin, ymax = (float(v) for v in data["extent"])
    log_prob = np.asarray(data["log_prob"], dtype=float)
    if log_prob.ndim != 2:
        raise ValueError(f"log_prob has shape {log_prob.shape}, expected (ny, nx)")
    # A broken flow yields nan/inf: show those cells as density 0 instead of failing to draw.
    density = np.exp(np.clip(np.nan_to_num(log_prob, nan=-np.inf), -60.0, 30.0))
    ax_density.imshow(
        density, extent=(xmin, xmax, ymin, ymax), origin="lower", aspect="auto", cmap="viridis"
    )
    ax_density.set_title("learned density  exp(log p_X(x))")
    for ax in (ax_density, ax_points):
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
    for key, colour, label in (("data", "tab:blue", "data"), ("samples", "tab:orange", "samples")):
        points = _points(data.get(key))
        if len(points):
            ax_points.scatter(points[:, 0], points[:, 1], s=3, alpha=0.5, c=colour, label=label)
    ax_points.set_title("data and samples x = f(z), z ~ N(0, I)")
    ax_points.legend(loc="upper right", markerscale=4)


def _draw_losses(ax: Any, data: dict[str, Any]) -> None:
    losses = np.asarray(data["losses"], dtype=float).ravel()
    finite = np.isfinite(losses)
    ax.plot(np.flatnonzero(finite), losses[finite], lw=1)
    if not finite.all():
        ax.text(0.02, 0.95, f"{(~finite).sum()} non-finite losses", transform=ax.transAxes)
    ax.set_title("training loss (NLL, nats)")
    ax.set_xlabel("step (as recorded)")


def _points(raw: Any) -> np.ndarray:
    """The well-formed finite ``[x, y]`` pairs of ``raw``; a truncated or broken one is dropped."""
    pairs = [
        p
        for p in (raw if isinstance(raw, list) else [])
        if isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
    ]
    points = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return points[np.isfinite(points).all(axis=1)]


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in model.lower()) or "model"


def _save_atomic(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic.write_bytes(path, buffer.getvalue())
