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
    expected = (z @ A1.T + b1) @ A2.T + b2
    assert torch.allclose(x, expected), (
        "Sequential(f1, f2).forward should apply f1 first, then f2: x = A2 (A1 z + b1) + b2; "
        f"for z[0] = {z[0].tolist()} expected {expected[0].tolist()}, got {x[0].tolist()}"
    )
    total = math.log(2.0) + math.log(1.5)
    assert torch.allclose(logdet, torch.full((8,), total, **DOUBLE)), (
        "the log-dets of stacked layers add: log|det A1| + log|det A2| = log 2 + log 1.5 = "
        f"{total:.4f} for every sample; got {logdet.tolist()}"
    )
    error = float((z_back - z).abs().max())
    assert error < 1e-10, (
        "Sequential.inverse should undo the layers in reverse order (f2 first, then f1) and "
        f"give back z; the largest difference is {error:.3g}"
    )
    assert torch.allclose(inverse_logdet, -logdet), (
        "Sequential.inverse's log-det should be the sum of the layers' inverse log-dets, "
        f"-{total:.4f} for every sample; got {inverse_logdet.tolist()}"
    )
