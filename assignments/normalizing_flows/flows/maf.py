"""Masked autoregressive flows: MADE (Germain et al., 2015) and MAF (Papamakarios et al., 2017).

MAF transforms each variable with a shift and scale that depend only on the variables before
it in an ordering ``order`` (``order[0]`` first):

    x_i = z_i * exp(s_i(x_<i)) + t_i(x_<i)

``dx_i/dx_j = 0`` for every ``j`` after ``i`` in the order, so the Jacobian is triangular (after
permuting by ``order``) with diagonal ``exp(s_i)``, and

    log|det J_f(z)| = sum_i s_i(x_<i)        log|det J_{f^{-1}}(x)| = -sum_i s_i(x_<i)

Density (``inverse``) is one pass: all of ``x`` is known, so one MADE call gives every
``(t_i, s_i)`` and ``z = (x - t) * exp(-s)``. Sampling (``forward``) is ``d`` passes: ``x_i``
needs ``x_<i`` first, so the variables are produced one after the other.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from flows.base import Flow, soft_clamp


class MaskedLinear(torch.nn.Linear):
    """``y = x @ (W * mask).T + b``: a linear layer whose connection ``j -> i`` exists iff
    ``mask[i, j] = 1``. ``mask`` has shape ``(out_features, in_features)`` and is a buffer."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(
                f"mask must have shape {(out_features, in_features)}, got {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError("not implemented yet: maf.MaskedLinear.forward")


def made_masks(features: int, hidden_features: int, num_hidden: int, order: Tensor) -> list[Tensor]:
    """The ``num_hidden + 1`` connectivity masks of MADE, each ``(out, in)`` and 0/1.

    Give every unit a degree. Input ``order[k]`` has degree ``k`` (its rank in the order);
    hidden units get degrees in ``0..d-2``, cycled so each is used. A hidden unit of degree
    ``m`` may see inputs of degree ``<= m``; the output for the variable of degree ``k`` may see
    hidden units of degree ``< k`` (strictly: output ``k`` must not see input ``k``). Every
    path input -> output then goes to strictly higher degree, so output ``order[k]`` depends
    only on ``x[order[:k]]``, however few hidden units there are.
    """
    raise NotImplementedError("not implemented yet: maf.made_masks")


class MADE(torch.nn.Module):
    """A masked MLP ``x -> (t, s)`` whose outputs for ``order[k]`` see only ``x[order[:k]]``.

    One pass gives the shift ``t_i(x_<i)`` and the (softly bounded) log-scale ``s_i(x_<i)`` of
    every variable, each ``(batch, features)``. The last layer starts at zero, so a fresh MAF
    layer is the identity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int = 64,
        num_hidden: int = 2,
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        order = torch.arange(features) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(
                f"order must be a permutation of 0..{features - 1}, got {order.tolist()}"
            )
        masks = made_masks(features, hidden_features, num_hidden, order)
        masks[-1] = masks[-1].repeat(2, 1)  # the same connectivity for t and for s
        sizes = [features] + [hidden_features] * num_hidden + [2 * features]
        layers: list[torch.nn.Module] = []
        for size_in, size_out, mask in zip(sizes[:-1], sizes[1:], masks, strict=True):
            layers += [MaskedLinear(size_in, size_out, mask), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])  # no ReLU after the output layer
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.net(x).chunk(2, dim=-1)
        return shift, soft_clamp(log_scale)


class MAF(Flow):
    """One MAF layer: ``x_i = z_i * exp(s_i(x_<i)) + t_i(x_<i)``, ``(t, s)`` from a MADE."""

    def __init__(
        self,
        features: int,
        hidden_features: int = 64,
        num_hidden: int = 2,
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.made = MADE(features, hidden_features, num_hidden, order)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Sampling, ``features`` MADE passes: pass ``k`` fixes the ``k``-th variable in order."""
        raise NotImplementedError("not implemented yet: maf.MAF.forward")

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density, one MADE pass: ``z = (x - t(x)) * exp(-s(x))``."""
        raise NotImplementedError("not implemented yet: maf.MAF.inverse")
