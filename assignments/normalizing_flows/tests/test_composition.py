"""Self-checks for flows/composition.py: Sequential applies flows[0] first and adds log-dets."""

import math

import torch

from flows.change_of_variables import Affine
from flows.composition import Sequential

DOUBLE = {"dtype": torch.float64}


def test_sequential_of_affines_is_their_product():
    """Sequential(f1, f2) is x = A2 (A1 z + b1) + b2 with log|det| = log|det A1| + log|det A2|."""
    A1, b1 = torch.tensor([[2.0, 1.0], [0.0, 1.0]], **DOUBLE), torch.tensor([1.0, 0.0], **DOUBLE)
    A2, b2 = torch.tensor([[1.0, 0.0], [3.0, -1.5]], **DOUBLE), torch.tensor([0.0, 2.0], **DOUBLE)
    flow = Sequential(Affine(A1, b1), Affine(A2, b2))
    z = torch.randn(8, 2, **DOUBLE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, logdet = flow.forward(z)
        z_back, inverse_logdet = flow.inverse(x)
    assert torch.allclose(x, (z @ A1.T + b1) @ A2.T + b2)
    assert torch.allclose(logdet, torch.full((8,), math.log(2.0 * 1.5), **DOUBLE))
    assert torch.allclose(z_back, z)
    assert torch.allclose(inverse_logdet, -logdet)
