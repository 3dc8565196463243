"""Glow's two layers (Kingma & Dhariwal, 2018): activation normalization and the invertible 1x1
convolution. Both act on features, or on the channels of images ``(batch, C, H, W)``.

On an image a layer applies the same map to the ``C`` channels of each of the ``H * W`` pixels,
so its Jacobian is block-diagonal with ``H * W`` equal blocks and

    log|det J_f| = H * W * log|det (one pixel's C x C map)|

**ActNorm** is a per-feature affine map ``x = z * exp(log_scale) + shift``; ``log|det J_f| =
sum(log_scale)`` (times ``H * W``). Its parameters start from data: on the first batch it sees,
they are set so that that batch's output has zero mean and unit variance per feature (channel),
after which they train like any others. A deep flow then starts with well-scaled activations
whatever its input's scale (batch normalization's benefit, without its dependence on the batch).

**Invertible1x1** is ``x = z @ W.T``, a learned mixing of the features, with ``W`` kept in LU
form so that its determinant is free:

    W = P L (U + diag(sign * exp(log_abs_s)))

``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular. The
determinant of a triangular matrix is the product of its diagonal, ``|det P| = 1`` and
``det L = 1``, so ``log|det W| = sum(log_abs_s)``: O(d), not the O(d^3) of a determinant. The
inverse is exact too, ``W^{-1} = U'^{-1} L^{-1} P^T`` by two triangular solves: O(d^3) once,
then O(d^2) per pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flows.base import Flow


def _channels_last(x: Tensor) -> Tensor:
    """``(batch, C, ...)`` -> ``(batch, ..., C)``: the feature (channel) axis last."""
    return x.movedim(1, -1)


def _pixels(x: Tensor) -> int:
    """Pixels per sample that share one map: ``H * W`` for images, 1 for ``(batch, features)``."""
    return x[0, 0].numel()


class ActNorm(Flow):
    """``x = z * exp(log_scale) + shift`` per feature (channel), initialised from its first batch.

    The ``initialized`` buffer records that the first batch has been seen; it travels with the
    ``state_dict``, so a copy rebuilt from saved parameters does not initialise again.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(features))
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``x = z * exp(log_scale) + shift``; ``log|det J_f| = H * W * sum(log_scale)``."""
        ### BEGIN SOLUTION
        if not self.initialized:
            # Make this batch's x standard: exp(log_scale) = 1 / std(z), shift = -mean(z) / std(z).
            mean, std = self._statistics(z)
            self._initialize(shift=-mean / std, log_scale=-torch.log(std))
        shift, log_scale = self._shaped(z)
        log_abs_det = _pixels(z) * self.log_scale.sum()
        return z * torch.exp(log_scale) + shift, log_abs_det.expand(z.shape[0])
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = (x - shift) * exp(-log_scale)``;
        ``log|det J_{f^{-1}}| = -H * W * sum(log_scale)``."""
        ### BEGIN SOLUTION
        if not self.initialized:
            # Make this batch's z standard: shift = mean(x), exp(log_scale) = std(x).
            mean, std = self._statistics(x)
            self._initialize(shift=mean, log_scale=torch.log(std))
        shift, log_scale = self._shaped(x)
        log_abs_det = -_pixels(x) * self.log_scale.sum()
        return (x - shift) * torch.exp(-log_scale), log_abs_det.expand(x.shape[0])
        ### END SOLUTION

    def _statistics(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Per-feature mean and (population) standard deviation over batch and pixels."""
        ### BEGIN SOLUTION
        flat = _channels_last(batch.detach()).reshape(-1, batch.shape[1])
        # A constant feature has std 0; a floor keeps its scale finite.
        return flat.mean(0), flat.std(0, correction=0).clamp_min(1e-6)
        ### END SOLUTION

    def _initialize(self, shift: Tensor, log_scale: Tensor) -> None:
        ### BEGIN SOLUTION
        with torch.no_grad():
            self.shift.copy_(shift)
            self.log_scale.copy_(log_scale)
            self.initialized.fill_(True)
        ### END SOLUTION

    def _shaped(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``shift`` and ``log_scale`` shaped to broadcast over ``like``'s feature axis 1."""
        shape = (1, -1) + (1,) * (like.dim() - 2)
        return self.shift.view(shape), self.log_scale.view(shape)


class Invertible1x1(Flow):
    """``x = z @ W.T`` with ``W = P L (U + diag(sign * exp(log_abs_s)))``; ``log|det| = sum
    log_abs_s`` (times ``H * W``). Starts as a random rotation, LU-decomposed once."""

    def __init__(self, features: int) -> None:
        super().__init__()
        rotation, _ = torch.linalg.qr(torch.randn(features, features))
        P, L, U = torch.linalg.lu(rotation)
        diagonal = U.diagonal()
        self.register_buffer("P", P)  # fixed: a permutation is not learned
        self.register_buffer("sign", torch.sign(diagonal))  # fixed: det W never crosses 0
        self.L = torch.nn.Parameter(L)  # only the strict lower triangle is used
        self.U = torch.nn.Parameter(U)  # only the strict upper triangle is used
        self.log_abs_s = torch.nn.Parameter(torch.log(diagonal.abs()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``x = z @ W.T`` on the feature (channel) axis; ``log|det J_f| = H * W * sum
        log_abs_s``."""
        ### BEGIN SOLUTION
        x = _channels_last(z) @ self.weight().T
        log_abs_det = _pixels(z) * self.log_abs_s.sum()
        return x.movedim(-1, 1), log_abs_det.expand(z.shape[0])
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = x @ W^{-T}`` on the feature (channel) axis, ``W^{-T} = P L^{-T} U'^{-T}``."""
        ### BEGIN SOLUTION
        lower, upper = self._triangles()
        # W^{-T} = (P L U')^{-T} = P L^{-T} U'^{-T} (P^{-T} = P): two triangular solves on d x d
        # matrices once per call (Y A = B, left=False), then one matmul for all the pixels,
        # cheaper than two solves for every pixel.
        p_lower_inv_t = torch.linalg.solve_triangular(
            lower.mT, self.P, upper=True, left=False, unitriangular=True
        )
        w_inv_t = torch.linalg.solve_triangular(upper.mT, p_lower_inv_t, upper=False, left=False)
        z = _channels_last(x) @ w_inv_t
        log_abs_det = -_pixels(x) * self.log_abs_s.sum()
        return z.movedim(-1, 1), log_abs_det.expand(x.shape[0])
        ### END SOLUTION

    def weight(self) -> Tensor:
        """The ``(features, features)`` matrix ``W = P L U'``, ``U' = U + diag(sign * exp(s))``."""
        lower, upper = self._triangles()
        return self.P @ lower @ upper

    def _triangles(self) -> tuple[Tensor, Tensor]:
        """``L`` (unit lower-triangular) and ``U'`` (upper, diagonal ``sign * exp(log_abs_s)``)."""
        ### BEGIN SOLUTION
        eye = torch.eye(self.L.shape[0], dtype=self.L.dtype, device=self.L.device)
        lower = torch.tril(self.L, -1) + eye
        upper = torch.triu(self.U, 1) + torch.diag(self.sign * torch.exp(self.log_abs_s))
        return lower, upper
        ### END SOLUTION
