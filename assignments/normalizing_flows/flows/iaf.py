"""Inverse autoregressive flows (Kingma et al., 2016): MAF's MADE, used the other way round.

IAF conditions each variable's shift and scale on the *base* variables before it in ``order``:

    x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)

``dx_i/dz_j = 0`` for every ``j`` after ``i`` in the order, so the Jacobian is again triangular
with diagonal ``exp(s_i)``, and

    log|det J_f(z)| = sum_i s_i(z_<i)        log|det J_{f^{-1}}(x)| = -sum_i s_i(z_<i)

The trade-off mirrors MAF's. Sampling (``forward``) is one pass: all of ``z`` is known, so one
MADE call gives every ``(t_i, s_i)``. Density (``inverse``) is ``d`` passes: ``z_i`` needs
``z_<i`` first, so the base variables are recovered one after the other. MAF is the model to
train by maximum likelihood on data; IAF the one to sample from fast (variational posteriors,
distillation). On the same MADE weights the two are mirror images: ``IAF.forward(u)`` and
``MAF.inverse(u)`` make the same single call ``(t, s) = made(u)``; one applies the affine map
(log-det ``sum s``), the other undoes it (log-det ``-sum s``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flows.base import Flow
from flows.maf import MADE


class IAF(Flow):
    """One IAF layer: ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)``, ``(t, s)`` from a MADE."""

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
        """Sampling, one MADE pass: ``x = z * exp(s(z)) + t(z)``."""
        raise NotImplementedError("not implemented yet: iaf.IAF.forward")

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density, ``features`` MADE passes: pass ``k`` fixes the ``k``-th base variable."""
        raise NotImplementedError("not implemented yet: iaf.IAF.inverse")
