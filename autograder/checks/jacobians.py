"""Derivatives of worker maps, measured in the harness: float64 central differences.

There is no autograd across the boundary. ``jacobians(fn, x)`` sends all ``2 d`` perturbations
of every sample to the worker in one call (points the harness chose, never the worker's own
outputs) and differences the answers here: the error is about ``eps^2`` times the third
derivative plus rounding, ~1e-9 for the course's layers in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def jacobians(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Per-sample Jacobians ``(batch, d_out, d_in)`` of ``fn`` at ``x`` by central differences.

    ``fn`` maps a batch ``(n, d_in)`` to ``(n, d_out)`` sample by sample.
    """
    batch, d = x.shape
    if x.dtype != torch.float64:
        eps = max(eps, 1e-2)  # float32 layers: rounding would swamp a smaller step
    steps = eps * torch.eye(d, dtype=torch.float64)
    centre = x.double()[:, None, :]
    points = torch.cat([(centre + steps).reshape(-1, d), (centre - steps).reshape(-1, d)])
    out = fn(points.to(x.dtype)).double()
    plus, minus = out[: batch * d].reshape(batch, d, -1), out[batch * d :].reshape(batch, d, -1)
    return ((plus - minus) / (2 * eps)).transpose(1, 2)


def log_abs_dets(jacobian: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of each Jacobian of a batch ``(batch, d, d)``."""
    return torch.linalg.slogdet(jacobian).logabsdet
