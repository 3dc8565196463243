"""Coupling layers (NICE, RealNVP): a triangular Jacobian whose determinant costs O(d).

A binary ``mask`` splits the features. Entries with ``mask = 1`` pass through unchanged and
condition the others through a neural network ``NN(mask * z)``:

    additive (NICE):    x = z + (1 - mask) * t(mask * z)
    affine (RealNVP):   x = z * exp(s(mask * z)) + t(mask * z),  s = t = 0 where mask = 1

Order the features as (passive, active). Then ``dx_passive/dz = I``,
``dx_passive/dz_active = 0``, and ``dx_active/dz_active = diag(exp(s))``: the Jacobian is
block-triangular, its determinant is the product of its diagonal, and

    log|det J_f(z)| = sum_i s_i(mask * z)        (0 for the additive layer)

no matter how complicated the network is. The inverse only needs ``NN`` in the forward
direction, because ``mask * x = mask * z``: ``z = (x - t(mask * x)) * exp(-s(mask * x))``.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from flows.base import Flow, soft_clamp


def _mlp(
    features: int, out_features: int, hidden_features: int, num_hidden: int
) -> torch.nn.Module:
    """The conditioner network ``features -> out_features`` with ``num_hidden`` ReLU layers.

    Its last layer starts at zero, so a fresh coupling layer is exactly the identity: a deep
    stack starts as ``x = z`` and training moves away from there smoothly.
    """
    sizes = [features] + [hidden_features] * num_hidden
    layers: list[torch.nn.Module] = []
    for size_in, size_out in pairwise(sizes):
        layers += [torch.nn.Linear(size_in, size_out), torch.nn.ReLU()]
    last = torch.nn.Linear(sizes[-1], out_features)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return torch.nn.Sequential(*layers, last)


class _Coupling(Flow):
    """Holds the 0/1 ``mask`` (a buffer, so it follows ``.to(device)``) and the conditioner."""

    def __init__(self, mask: Tensor, hidden_features: int, num_hidden: int, params: int) -> None:
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.dim() != 1 or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be a 0/1 tensor of shape (d,), got {mask.tolist()}")
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        features = mask.shape[0]
        self.conditioner = _mlp(features, params * features, hidden_features, num_hidden)


class AdditiveCoupling(_Coupling):
    """NICE: ``x = z + (1 - mask) * t(mask * z)``; volume preserving, ``log|det J_f| = 0``."""

    def __init__(self, mask: Tensor, hidden_features: int = 64, num_hidden: int = 2) -> None:
        super().__init__(mask, hidden_features, num_hidden, params=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        shift = (1 - self.mask) * self.conditioner(self.mask * z)
        return z + shift, z.new_zeros(z.shape[0])
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        shift = (1 - self.mask) * self.conditioner(self.mask * x)
        return x - shift, x.new_zeros(x.shape[0])
        ### END SOLUTION


class AffineCoupling(_Coupling):
    """RealNVP: ``x = z * exp(s(mask * z)) + t(mask * z)`` on the entries where ``mask = 0``.

    The conditioner outputs ``(t, s)``; ``s`` is bounded softly with
    :func:`~flows.base.soft_clamp`, and both are zeroed where ``mask = 1``.
    ``log|det J_f(z)| = sum_i s_i`` and ``log|det J_{f^{-1}}(x)| = -sum_i s_i``.
    """

    def __init__(self, mask: Tensor, hidden_features: int = 64, num_hidden: int = 2) -> None:
        super().__init__(mask, hidden_features, num_hidden, params=2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        shift, log_scale = self._shift_and_log_scale(self.mask * z)
        return z * torch.exp(log_scale) + shift, log_scale.sum(-1)
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        shift, log_scale = self._shift_and_log_scale(self.mask * x)
        return (x - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
        ### END SOLUTION

    def _shift_and_log_scale(self, passive: Tensor) -> tuple[Tensor, Tensor]:
        """``t`` and bounded ``s`` from the passive entries, both 0 where ``mask = 1``."""
        ### BEGIN SOLUTION
        shift, log_scale = self.conditioner(passive).chunk(2, dim=-1)
        active = 1 - self.mask
        return active * shift, active * soft_clamp(log_scale)
        ### END SOLUTION
