"""Hidden tests of ``flows/composition.py``: ``Sequential(f_1, ..., f_K)``.

``x = f_K(... f_1(z))``, ``log|det J_f(z)| = sum_k log|det J_{f_k}(z_{k-1})|``, and the inverse
undoes the layers last to first. The layers here are the test's own, with non-zero,
sample-dependent log-determinants and maps that do not commute, so only the right order and the
full sum pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flows.base import Flow, Reverse


class ScaleShift(Flow):
    """``x = a z + b`` elementwise (learnable): ``log|det J_f| = d log|a|``."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.a * z + self.b, self.a.abs().log().expand(z.shape[0]) * z.shape[1]

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.b) / self.a, -self.a.abs().log().expand(x.shape[0]) * x.shape[1]


class Sinh(Flow):
    """``x = sinh(z)`` elementwise: ``log|det J_f(z)| = sum log cosh z`` (differs per sample)."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sinh(z), torch.cosh(z).log().sum(-1)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.asinh(x)
        return z, -torch.cosh(z).log().sum(-1)


class Swirl(Flow):
    """``x = (z_0, z_1 + z_0^2)``: a shear along a parabola, ``log|det J| = 0``."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.stack([z[:, 0], z[:, 1] + z[:, 0] ** 2], -1), z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.stack([x[:, 0], x[:, 1] - x[:, 0] ** 2], -1), x.new_zeros(x.shape[0])


def layers() -> list[Flow]:
    """Four layers, three with non-zero log-determinants; no two neighbours commute."""
    return [ScaleShift(2.0, 1.0), Sinh(), Swirl(), ScaleShift(0.5, -1.0)]


def by_hand(flows: list[Flow], z: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``flows[0]`` first and sum the log-determinants."""
    total = z.new_zeros(z.shape[0])
    for flow in flows:
        z, log_abs_det = flow(z)
        total = total + log_abs_det
    return z, total


def fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values.flatten().tolist()) + "]"


@pytest.fixture
def chain(composition) -> tuple[Flow, list[Flow]]:
    flows = layers()
    return composition.Sequential(*flows), flows


@pytest.fixture
def z() -> Tensor:
    return 0.7 * torch.randn(6, 2, dtype=torch.float64)


@pytest.mark.weight(2)
def test_forward_order(chain, z):
    """Sequential(f_1, ..., f_K) applies f_1 first"""
    sequential, flows = chain
    x, _ = sequential(z)
    expected, _ = by_hand(flows, z)
    assert torch.allclose(x, expected, atol=1e-10), (
        "Sequential(f_1, f_2, f_3, f_4).forward(z) should be f_4(f_3(f_2(f_1(z)))); for "
        f"z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )


@pytest.mark.weight(2)
def test_inverse_order(chain, z):
    """Sequential's inverse undoes the last layer first"""
    sequential, flows = chain
    x, _ = by_hand(flows, z)
    back, _ = sequential.inverse(x)
    assert torch.allclose(back, z, atol=1e-10), (
        "Sequential(f_1, ..., f_4).inverse(x) should be f_1^{-1}(f_2^{-1}(f_3^{-1}(f_4^{-1}(x)))) "
        f"and give back z = {fmt(z[0])}; got {fmt(back[0])}"
    )


@pytest.mark.weight(2)
def test_forward_log_dets_sum(chain, z):
    """Sequential's forward log-determinant is the sum of its layers'"""
    sequential, flows = chain
    _, log_abs_det = sequential(z)
    _, expected = by_hand(flows, z)
    assert tuple(log_abs_det.shape) == (6,), (
        f"Sequential.forward on 6 samples should return 6 log-determinants (shape (6,)), got "
        f"shape {tuple(log_abs_det.shape)}"
    )
    assert torch.allclose(log_abs_det, expected, atol=1e-10), (
        "Sequential.forward should return sum_k log|det J_{f_k}(z_{k-1})| over all 4 layers "
        f"(each evaluated where it is applied): expected {fmt(expected)}, got {fmt(log_abs_det)}"
    )


@pytest.mark.weight(2)
def test_inverse_log_dets_sum(chain, z):
    """Sequential's inverse log-determinant is the sum of its layers' inverse ones"""
    sequential, flows = chain
    x, forward = by_hand(flows, z)
    _, log_abs_det = sequential.inverse(x)
    assert tuple(log_abs_det.shape) == (6,), (
        f"Sequential.inverse on 6 samples should return 6 log-determinants (shape (6,)), got "
        f"shape {tuple(log_abs_det.shape)}"
    )
    assert torch.allclose(log_abs_det, -forward, atol=1e-10), (
        "Sequential.inverse should return sum_k log|det J_{f_k^{-1}}| over all 4 layers, i.e. "
        f"minus the forward log-determinant: expected {fmt(-forward)}, got {fmt(log_abs_det)}"
    )


def test_with_reverse(composition, z):
    """Sequential works with the given Reverse layer"""
    sequential = composition.Sequential(ScaleShift(3.0, 0.0), Reverse(), Swirl())
    x, log_abs_det = sequential(z)
    expected = torch.stack([3 * z[:, 1], 3 * z[:, 0] + 9 * z[:, 1] ** 2], -1)
    assert torch.allclose(x, expected, atol=1e-10), (
        "Sequential(x3, Reverse(), Swirl()) maps z = (a, b) to (3b, 3a + 9b^2); for "
        f"z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )
    want = torch.full((6,), 2 * math.log(3.0), dtype=torch.float64)
    assert torch.allclose(log_abs_det, want, atol=1e-10), (
        f"Sequential(x3, Reverse(), Swirl()) in 2-D has log|det J| = 2 log 3 = {want[0]:.4f}, "
        f"got {fmt(log_abs_det)}"
    )


def test_single_layer(composition, z):
    """A Sequential of one layer is that layer"""
    layer = Sinh()
    x, log_abs_det = composition.Sequential(layer)(z)
    expected, expected_lad = layer(z)
    ok = torch.allclose(x, expected) and torch.allclose(log_abs_det, expected_lad)
    assert ok, (
        f"Sequential(f) should behave like f: expected log|det J| {fmt(expected_lad)}, "
        f"got {fmt(log_abs_det)}"
    )


def test_registers_layers(composition):
    """Sequential registers its layers, so an optimizer and .to(device) reach them"""
    sequential = composition.Sequential(ScaleShift(2.0, 1.0), Sinh(), ScaleShift(0.5, 0.0))
    params = list(sequential.parameters())
    assert len(params) == 4, (
        "Sequential of two ScaleShift layers (2 parameters each) should expose their 4 "
        "parameters through .parameters() (keep the layers in a torch.nn.ModuleList); "
        f"got {len(params)}"
    )
    # Registered is only useful if training reaches them: the NLL's gradient must flow to all.
    x, log_det = sequential(torch.randn(8, 2, dtype=params[0].dtype))
    (x.sum() + log_det.sum()).backward()
    missing = sum(p.grad is None for p in params)
    assert missing == 0, (
        f"after a forward pass and backward(), {missing} of the 4 layer parameters got no "
        "gradient: forward must run every layer"
    )
