"""Composing flows: a chain of bijections is a bijection, and log-determinants add.

For ``f = f_K o ... o f_1`` with ``z_0 = z``, ``z_k = f_k(z_{k-1})`` and ``x = z_K``, the chain
rule makes ``J_f(z)`` the product of the layers' Jacobians, and the determinant of a product is
the product of the determinants:

    log|det J_f(z)| = sum_k log|det J_{f_k}(z_{k-1})|

The inverse undoes the layers in reverse order, ``f^{-1} = f_1^{-1} o ... o f_K^{-1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flows.base import Flow


class Sequential(Flow):
    """``Sequential(f_1, ..., f_K)`` is ``x = f_K(... f_1(z))``: ``f_1`` is applied first."""

    def __init__(self, *flows: Flow) -> None:
        super().__init__()
        self.flows = torch.nn.ModuleList(flows)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``x = f_K(... f_1(z))`` and ``sum_k log|det J_{f_k}(z_{k-1})|``."""
        ### BEGIN SOLUTION
        log_abs_det = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, ladj = flow(z)
            log_abs_det = log_abs_det + ladj
        return z, log_abs_det
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = f_1^{-1}(... f_K^{-1}(x))`` and the sum of the inverse log-determinants."""
        ### BEGIN SOLUTION
        log_abs_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flows):
            x, ladj = flow.inverse(x)
            log_abs_det = log_abs_det + ladj
        return x, log_abs_det
        ### END SOLUTION
