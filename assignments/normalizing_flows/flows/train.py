"""Maximum-likelihood training: minimize the negative log-likelihood of the data.

    NLL = -1/N sum_n log p_X(x_n) = -1/N sum_n [log p_Z(f^{-1}(x_n)) + log|det J_{f^{-1}}(x_n)|]

with ``p_Z = N(0, I)``. Minimizing it is fitting ``p_X`` to the data (it is the
KL divergence from the data distribution to the model, up to a constant).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from flows.base import Flow, standard_normal
from flows.change_of_variables import log_prob


def nll(flow: Flow, base: Distribution, x: Tensor) -> Tensor:
    """The mean negative log-likelihood of the batch ``x``, in nats: a scalar tensor."""
    raise NotImplementedError("not implemented yet: train.nll")


def default_device() -> torch.device:
    """CUDA when it is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    flow: Flow,
    data: Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    device: torch.device | str | None = None,
    seed: int = 0,
    callback: Callable[[int, float], object] | None = None,
) -> list[float]:
    """Fit ``flow`` to ``data`` (``(n, d)``) with Adam on minibatch NLLs under ``N(0, I)``.

    Each step draws ``batch_size`` rows of ``data`` at random (with replacement) from a
    generator seeded with ``seed``, so a run is reproducible. The flow and the data move to
    ``device`` (``None``: :func:`default_device`) and the flow stays there.
    Returns the loss of every step (``steps`` floats).

    ``callback``, when given, is called as ``callback(step, loss)`` right after each step:
    ``step`` counts from 0 to ``steps - 1`` (the index of that step's loss in the returned
    list) and ``loss`` is that step's loss as a Python float. It lets one call of ``train``
    drive a progress bar or a live plot; without it the loop never waits for the loss.
    """
    raise NotImplementedError("not implemented yet: train.train")
