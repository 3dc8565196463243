"""Small flows of the course's own that the hidden suites hand to student code (in the worker).

Nothing here is secret or an answer: these are probes with known Jacobians, built on the given
``flows.base.Flow``, so that a test can ask "does your ``train``/``Sequential``/``log_prob`` do
the right thing with *this* flow?". Copied into the worker's sandbox beside ``worker.py``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from flows.base import Flow


class Diagonal(Flow):
    """``x = exp(s) * z + b`` elementwise, learnable; records every device it is moved to."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.shift = torch.nn.Parameter(torch.zeros(features))
        self.moved_to: list[str] = []

    def _apply(self, fn, *args, **kwargs):
        # A probe tensor shows where this conversion sends tensors; one it cannot take says nothing.
        with contextlib.suppress(Exception):
            self.moved_to.append(fn(torch.zeros(())).device.type)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * (-self.log_scale).exp()
        return z, -self.log_scale.sum().expand(x.shape[0])

    def set(self, log_scale: list[float], shift: list[float]) -> None:
        with torch.no_grad():
            self.log_scale.copy_(torch.tensor(log_scale))
            self.shift.copy_(torch.tensor(shift))

    def device_types(self) -> list[str]:
        return sorted({p.device.type for p in self.parameters()})


def made_passes(flow: torch.nn.Module, direction: str, x: Tensor) -> tuple[object, int]:
    """``flow.<direction>(x)`` and how many forward calls its ``MADE`` submodules made.

    MAF's density is one MADE pass and its sampling ``features`` passes; a forward hook on
    every submodule that is a ``flows.maf.MADE`` counts them where the layer runs.
    """
    from flows.maf import MADE

    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    hooks = [m.register_forward_hook(count) for m in flow.modules() if isinstance(m, MADE)]
    try:
        out = getattr(flow, direction)(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, calls[0] if hooks else -1
