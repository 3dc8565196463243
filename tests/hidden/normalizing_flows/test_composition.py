"""Hidden tests of ``flows/composition.py``: ``Sequential(f_1, ..., f_K)``.

``x = f_K(... f_1(z))``, ``log|det J_f(z)| = sum_k log|det J_{f_k}(z_{k-1})|``, and the inverse
undoes the layers last to first. The layers are the course's probes (``probes.ScaleShift``,
``Sinh``, ``Swirl``), built in the worker and handed to the student's ``Sequential``, with
non-zero, sample-dependent log-determinants and maps that do not commute, so only the right
order and the full sum pass. What the chain should return is computed here, by hand, from the
same formulas (:data:`BY_HAND`), never by asking the worker's layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from autograder.checks import expect_pair, expect_tensor
from autograder.grading.remote import fetch

# Each probe layer by hand: (x, log|det J_f(z)|) of its forward, in plain torch.
Layer = Callable[[Tensor], tuple[Tensor, Tensor]]


def scale_shift(a: float | Tensor, b: float | Tensor) -> Layer:
    return lambda z: (a * z + b, torch.as_tensor(a).abs().log().expand(z.shape[0]) * z.shape[1])


def sinh(z: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sinh(z), torch.cosh(z).log().sum(-1)


def swirl(z: Tensor) -> tuple[Tensor, Tensor]:
    return torch.stack([z[:, 0], z[:, 1] + z[:, 0] ** 2], -1), z.new_zeros(z.shape[0])


def reverse(z: Tensor) -> tuple[Tensor, Tensor]:
    return z.flip(-1), z.new_zeros(z.shape[0])


def by_hand(layers: list[Layer], z: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``layers[0]`` first and sum the log-determinants."""
    total = z.new_zeros(z.shape[0])
    for layer in layers:
        z, log_abs_det = layer(z)
        total = total + log_abs_det
    return z, total


# Four layers, three with non-zero log-determinants; no two neighbours commute.
CHAIN = [("ScaleShift", (2.0, 1.0)), ("Sinh", ()), ("Swirl", ()), ("ScaleShift", (0.5, -1.0))]
BY_HAND = [scale_shift(2.0, 1.0), sinh, swirl, scale_shift(0.5, -1.0)]


def fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values.flatten().tolist()) + "]"


@pytest.fixture
def sequential(composition, probes):
    """The student's ``Sequential`` of the four probe layers of :data:`CHAIN` (a handle)."""
    return composition.Sequential(*(getattr(probes, name)(*args) for name, args in CHAIN))


@pytest.fixture
def z() -> Tensor:
    return 0.7 * torch.randn(6, 2, dtype=torch.float64)


@pytest.fixture
def x() -> Tensor:
    """Data-space points drawn here, not the image of anything the worker was asked before."""
    generator = torch.Generator().manual_seed(21)
    return 1.5 * torch.randn(6, 2, dtype=torch.float64, generator=generator)


@pytest.mark.weight(2)
def test_forward_order(sequential, z):
    """Sequential(f_1, ..., f_K) applies f_1 first"""
    x, _ = expect_pair(sequential(z), "Sequential.forward", 6, 2)
    expected, _ = by_hand(BY_HAND, z)
    assert torch.allclose(x.double(), expected, atol=1e-10), (
        "Sequential(f_1, f_2, f_3, f_4).forward(z) should be f_4(f_3(f_2(f_1(z)))); for "
        f"z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )


@pytest.mark.weight(2)
def test_inverse_order(sequential, x):
    """Sequential's inverse undoes the last layer first"""
    z, _ = expect_pair(sequential.inverse(x), "Sequential.inverse", 6, 2)
    again, _ = by_hand(BY_HAND, z.double())  # the forward of what came back, computed here
    assert torch.allclose(again, x, atol=1e-9), (
        "Sequential(f_1, ..., f_4).inverse(x) should be f_1^{-1}(f_2^{-1}(f_3^{-1}(f_4^{-1}(x)))), "
        f"a z with f_4(f_3(f_2(f_1(z)))) = x; for x = {fmt(x[0])} it returned z = {fmt(z[0])}, "
        f"which the chain maps to {fmt(again[0])}"
    )


@pytest.mark.weight(2)
def test_forward_log_dets_sum(sequential, z):
    """Sequential's forward log-determinant is the sum of its layers'"""
    _, log_abs_det = expect_pair(sequential(z), "Sequential.forward", 6, 2)
    _, expected = by_hand(BY_HAND, z)
    assert torch.allclose(log_abs_det.double(), expected, atol=1e-10), (
        "Sequential.forward should return sum_k log|det J_{f_k}(z_{k-1})| over all 4 layers "
        f"(each evaluated where it is applied): expected {fmt(expected)}, got {fmt(log_abs_det)}"
    )


@pytest.mark.weight(2)
def test_inverse_log_dets_sum(sequential, x):
    """Sequential's inverse log-determinant is the sum of its layers' inverse ones"""
    z, log_abs_det = expect_pair(sequential.inverse(x), "Sequential.inverse", 6, 2)
    again, forward = by_hand(BY_HAND, z.double())
    assert torch.allclose(again, x, atol=1e-9), (
        f"Sequential.inverse(x) should invert the chain; for x = {fmt(x[0])} it returned "
        f"z = {fmt(z[0])}, which the chain maps to {fmt(again[0])}"
    )
    assert torch.allclose(log_abs_det.double(), -forward, atol=1e-9), (
        "Sequential.inverse should return sum_k log|det J_{f_k^{-1}}| over all 4 layers, i.e. "
        f"minus the forward log-determinant: expected {fmt(-forward)}, got {fmt(log_abs_det)}"
    )


def test_three_dimensions(composition, given, probes):
    """Sequential works in 3-D, both ways (with the given Reverse between the layers)"""
    chain = composition.Sequential(
        probes.ScaleShift(1.5, -0.5), given.Reverse(), probes.Sinh(), probes.ScaleShift(0.5, 2.0)
    )
    layers = [scale_shift(1.5, -0.5), reverse, sinh, scale_shift(0.5, 2.0)]
    generator = torch.Generator().manual_seed(31)
    z = 0.8 * torch.randn(5, 3, dtype=torch.float64, generator=generator)
    x, log_abs_det = expect_pair(chain(z), "Sequential.forward", 5, 3)
    expected, expected_log_det = by_hand(layers, z)
    assert torch.allclose(x.double(), expected, atol=1e-10) and torch.allclose(
        log_abs_det.double(), expected_log_det, atol=1e-10
    ), (
        f"Sequential(x1.5 - 0.5, Reverse(), sinh, x0.5 + 2) in 3-D: for z = {fmt(z[0])} expected "
        f"x = {fmt(expected[0])} and log|det J| {float(expected_log_det[0]):.4f}, got "
        f"{fmt(x[0])} and {float(log_abs_det[0]):.4f}"
    )
    fresh = 2.0 + 0.5 * torch.randn(5, 3, dtype=torch.float64, generator=generator)
    back, back_log_det = expect_pair(chain.inverse(fresh), "Sequential.inverse", 5, 3)
    again, forward = by_hand(layers, back.double())
    assert torch.allclose(again, fresh, atol=1e-9) and torch.allclose(
        back_log_det.double(), -forward, atol=1e-9
    ), (
        f"Sequential(...).inverse in 3-D should invert the chain and return minus its forward "
        f"log|det J|: for x = {fmt(fresh[0])} it returned z = {fmt(back[0])} (which the chain "
        f"maps to {fmt(again[0])}) and {float(back_log_det[0]):.4f} (expected "
        f"{float(-forward[0]):.4f})"
    )


def test_is_a_bijection(sequential, check, z):
    """Sequential of the course's layers passes the bijection checks (round trips through a
    rebuilt copy, log-dets against the Jacobian, forward and inverse log-dets opposite)"""
    name = "Sequential(x2 + 1, sinh, swirl, x0.5 - 1)"
    check.invertible(sequential, z, name)
    check.log_det_matches_jacobian(sequential, z, name)
    check.log_dets_negate(sequential, z, name)


def test_with_reverse(composition, given, probes, z):
    """Sequential works with the given Reverse layer"""
    sequential = composition.Sequential(
        probes.ScaleShift(3.0, 0.0), given.Reverse(), probes.Swirl()
    )
    x, log_abs_det = expect_pair(sequential(z), "Sequential.forward", 6, 2)
    expected, expected_log_det = by_hand([scale_shift(3.0, 0.0), reverse, swirl], z)
    assert torch.allclose(x.double(), expected, atol=1e-10), (
        "Sequential(x3, Reverse(), Swirl()) maps z = (a, b) to (3b, 3a + 9b^2); for "
        f"z = {fmt(z[0])} expected {fmt(expected[0])}, got {fmt(x[0])}"
    )
    assert torch.allclose(log_abs_det.double(), expected_log_det, atol=1e-10), (
        f"Sequential(x3, Reverse(), Swirl()) in 2-D has log|det J| = 2 log 3 = "
        f"{2 * math.log(3.0):.4f}, got {fmt(log_abs_det)}"
    )


def test_single_layer(composition, probes, z):
    """A Sequential of one layer is that layer"""
    x, log_abs_det = expect_pair(composition.Sequential(probes.Sinh())(z), "Sequential", 6, 2)
    expected, expected_lad = sinh(z)
    ok = torch.allclose(x.double(), expected) and torch.allclose(log_abs_det.double(), expected_lad)
    assert ok, (
        f"Sequential(f) should behave like f: for z = {fmt(z[0])} expected x = "
        f"{fmt(expected[0])} and log|det J| {fmt(expected_lad)}, got x = {fmt(x[0])} and "
        f"{fmt(log_abs_det)}"
    )


def test_registers_layers(composition, probes):
    """Sequential registers its layers, so an optimizer and .to(device) reach them"""
    first, second = probes.ScaleShift(2.0, 1.0), probes.ScaleShift(0.5, 0.0)
    sequential = composition.Sequential(first, probes.Sinh(), second)
    count = probes.count_parameters(sequential)
    assert count == 4, (
        "Sequential of two ScaleShift layers (2 parameters each) should expose their 4 "
        "parameters through .parameters() (keep the layers in a torch.nn.ModuleList); "
        f"got {count}"
    )
    # Registered is only useful if training reaches them: the gradient must flow to every
    # layer, and be the one of the whole chain (computed here by autograd on the formulas).
    z = torch.randn(8, 2, dtype=torch.float64)
    probes.backward_of_sum(sequential, z)
    a1, b1, a2, b2 = (
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (2, 1, 0.5, 0)
    )
    x, log_det = by_hand([scale_shift(a1, b1), sinh, scale_shift(a2, b2)], z)
    (x.sum() + log_det.sum()).backward()
    for name, layer, a, b in (("first", first, a1, b1), ("last", second, a2, b2)):
        for parameter, expected in (("a", a.grad), ("b", b.grad)):
            grad = fetch(getattr(layer, parameter).grad)
            assert grad is not None, (
                f"after a forward pass of Sequential and backward(), the {name} layer's "
                f"parameter {parameter} got no gradient: forward must run every layer"
            )
            grad = expect_tensor(grad, f"the gradient of the {name} layer's {parameter}", ())
            assert abs(float(grad) - float(expected)) < 1e-8, (
                f"the gradient of sum(x) + sum(log|det J|) through Sequential(x2 + 1, sinh, "
                f"x0.5) with respect to the {name} layer's {parameter} should be "
                f"{float(expected):.6f}, got {float(grad):.6f}"
            )
    # .to(...) reaches registered layers only: the float64 layers must follow to float32.
    sequential.float()
    dtypes = {
        str(expect_tensor(fetch(layer.a), "a layer parameter").dtype) for layer in (first, second)
    }
    assert dtypes == {"torch.float32"}, (
        "Sequential(...).float() should convert its layers' parameters to float32 (layers kept "
        f"in a torch.nn.ModuleList are reached by .to()); they are {sorted(dtypes)}"
    )
