"""The interface every flow implements, the standard-normal base, and two small helpers.

A flow is a bijection ``x = f(z)``. Each direction also returns the log-absolute-determinant of
its own Jacobian, one number per sample (shape ``(batch,)``, in nats):

    forward(z) -> (x, log|det J_f(z)|)
    inverse(x) -> (z, log|det J_{f^{-1}}(x)|) = (z, -log|det J_f(z)|)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal


class Flow(torch.nn.Module):
    """A bijection ``x = f(z)`` that knows the log-determinant of its Jacobian."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Map base samples to data: ``x = f(z)``; returns ``(x, log|det J_f(z)|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map data to the base: ``z = f^{-1}(x)``; returns ``(z, log|det J_{f^{-1}}(x)|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")


class Reverse(Flow):
    """Reverses the feature order: ``x = (z_{d-1}, ..., z_0)``.

    A permutation matrix has ``|det| = 1``, so both log-determinants are 0. Placed between
    coupling or autoregressive layers, it lets every feature be transformed by some layer.
    """

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(-1), x.new_zeros(x.shape[0])


def standard_normal(
    dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Distribution:
    """The base ``p_Z = N(0, I_dim)``; its ``log_prob`` sums over features, shape ``(batch,)``."""
    loc = torch.zeros(dim, device=device, dtype=dtype)
    return Independent(Normal(loc, torch.ones_like(loc)), 1)


def soft_clamp(log_scale: Tensor, bound: float = 3.0) -> Tensor:
    """``bound * tanh(log_scale / bound)``: the identity near 0, never beyond ``±bound``.

    Affine layers scale by ``exp(log_scale)``. An unbounded log-scale can blow up early in
    training; squashing it smoothly keeps every layer's scale in ``[e^-bound, e^bound]`` and the
    map exactly invertible (the inverse simply divides by the same scale).
    """
    return bound * torch.tanh(log_scale / bound)
