"""The change-of-variables formula: densities and samples of ``X = f(Z)``.

For a bijection ``x = f(z)`` and ``z = f^{-1}(x)``:

    p_X(x) = p_Z(f^{-1}(x)) * |det J_{f^{-1}}(x)|
    log p_X(x) = log p_Z(z) + log|det J_{f^{-1}}(x)| = log p_Z(z) - log|det J_f(z)|

Example (1-D): ``Z ~ Uniform(0, 1)`` and ``f(z) = 3z + 1`` give ``p_X(x) = 1/3`` on ``[1, 4]``:
the map stretches lengths by 3, so the density is divided by 3.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from flows.base import Flow


def log_prob(flow: Flow, base: Distribution, x: Tensor) -> Tensor:
    """``log p_X(x) = log p_Z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|``, shape ``(batch,)``.

    One call to ``flow.inverse`` gives both ``z = f^{-1}(x)`` and the log-determinant.
    """
    ### BEGIN SOLUTION
    z, log_abs_det = flow.inverse(x)
    return base.log_prob(z) + log_abs_det
    ### END SOLUTION


def sample(flow: Flow, base: Distribution, n: int) -> Tensor:
    """``n`` samples of ``X = f(Z)``: draw ``z ~ p_Z`` and push it through ``f``, shape ``(n, d)``.

    Sampling needs only the forward direction; no determinant is involved.
    """
    ### BEGIN SOLUTION
    z = base.sample((n,))
    x, _ = flow.forward(z)
    return x
    ### END SOLUTION


class Affine(Flow):
    """The affine bijection ``x = f(z) = A z + b`` (row vectors: ``x = z @ A.T + b``).

    ``A`` is any invertible ``(d, d)`` matrix. The Jacobian is ``A`` everywhere, so

        log|det J_f(z)| = log|det A|        log|det J_{f^{-1}}(x)| = -log|det A|

    and the inverse is ``z = A^{-1} (x - b)``. ``|det A|`` is the factor by which ``f`` scales
    volumes; a negative ``det A`` (a reflection) scales them by ``|det A|`` all the same.
    """

    def __init__(self, A: Tensor, b: Tensor) -> None:
        super().__init__()
        A, b = torch.as_tensor(A), torch.as_tensor(b)
        if A.dim() != 2 or A.shape[0] != A.shape[1] or b.shape != A.shape[:1]:
            raise ValueError(
                f"Affine needs A (d, d) and b (d,), got {tuple(A.shape)}, {tuple(b.shape)}"
            )
        self.A = torch.nn.Parameter(A.clone())
        self.b = torch.nn.Parameter(b.clone())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        x = z @ self.A.T + self.b
        log_abs_det = torch.linalg.slogdet(self.A).logabsdet
        return x, log_abs_det.expand(z.shape[0])
        ### END SOLUTION

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        # Solve z @ A.T = x - b rather than forming A^{-1}: cheaper and more accurate.
        z = torch.linalg.solve(self.A.T, x - self.b, left=False)
        log_abs_det = torch.linalg.slogdet(self.A).logabsdet
        return z, -log_abs_det.expand(x.shape[0])
        ### END SOLUTION
