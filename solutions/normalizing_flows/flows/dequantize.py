"""Flows on discrete data: uniform dequantization, the logit transform, and bits per dimension.

Images are integers ``k in {0, ..., K-1}`` (``K`` levels). A density on R^d can put infinite
density on those points; to compare models honestly, add uniform noise and rescale,

    y = (k + u) / K,    u ~ U[0, 1)^d,    y in [0, 1)^d

and fit a continuous density ``p(y)``. The discrete model ``P(k) = integral over the cube
[k/K, (k+1)/K) of p(y) dy`` is then bounded below by Jensen's inequality,

    log P(k) >= E_u[log p((k + u) / K)] - d * log K,

so the NLL of ``y`` (in nats, per image) plus ``d * log K`` bounds the discrete NLL. Divided by
``d`` and converted to bits, that is **bits per dimension**:

    bits/dim = (NLL_y / d + log K) / log 2

(8 bits/dim is a uniform guess over 256 grey levels; ``log2(17) = 4.09`` over 17.)

A flow's Gaussian base lives on all of R^d, data in ``(0, 1)``. The **logit transform** maps one
to the other: ``z = logit(alpha + (1 - 2 alpha) y)``, with ``alpha`` keeping ``y = 0`` away from
``logit(0) = -inf``. Per feature, ``dz/dy = (1 - 2 alpha) / (p (1 - p))`` with
``p = alpha + (1 - 2 alpha) y``, so

    log|det J_{f^{-1}}(y)| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flows.base import Flow


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """``(x + u) / levels`` with ``u ~ U[0, 1)`` drawn anew for every entry (from ``generator``).

    ``x`` holds integers in ``0..levels-1`` (any dtype); the result is floating point in
    ``[0, 1)`` (``x``'s dtype if it is floating, else torch's default).
    """
    ### BEGIN SOLUTION
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    noise = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    return (x.to(dtype) + noise) / levels
    ### END SOLUTION


class Logit(Flow):
    """``x = (sigmoid(z) - alpha) / (1 - 2 alpha)``: R -> (0, 1); ``inverse`` is the logit.

    Acts elementwise; the log-dets sum over every non-batch dimension.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``x = (sigmoid(z) - alpha) / (1 - 2 alpha)``;
        ``log|det J_f| = sum_i [log sigmoid(z_i) + log sigmoid(-z_i) - log(1 - 2 alpha)]``."""
        ### BEGIN SOLUTION
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        # log(p (1 - p)) with p = sigmoid(z), computed without rounding p to 0 or 1.
        log_dp = torch.nn.functional.logsigmoid(z) + torch.nn.functional.logsigmoid(-z)
        log_abs_det = (log_dp - math.log(1 - 2 * self.alpha)).flatten(1).sum(-1)
        return x, log_abs_det
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = logit(p)``, ``p = alpha + (1 - 2 alpha) x``;
        ``log|det J_{f^{-1}}| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]``."""
        ### BEGIN SOLUTION
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        log_abs_det = (math.log(1 - 2 * self.alpha) - log_p - log_1mp).flatten(1)
        return log_p - log_1mp, log_abs_det.sum(-1)
        ### END SOLUTION


def bits_per_dim(nll_nats: float | Tensor, dims: int, levels: int) -> float:
    """``(nll_nats / dims + log(levels)) / log(2)``: the per-image NLL of dequantized data in
    ``[0, 1)^dims`` (nats), as bits per dimension of the ``levels``-valued original."""
    ### BEGIN SOLUTION
    return (float(nll_nats) / dims + math.log(levels)) / math.log(2)
    ### END SOLUTION
