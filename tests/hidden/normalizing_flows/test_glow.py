"""Hidden tests of ``flows/glow.py``: ``ActNorm`` and ``Invertible1x1``.

ActNorm is ``x = z * exp(log_scale) + shift`` per feature (channel), initialised from its first
batch so that that batch's output has zero mean and unit variance per feature, then ordinary
parameters (kept in its ``state_dict`` with the fact that it is initialised). Invertible1x1 is
``x = z @ W.T`` with ``W = P L (U + diag(sign * exp(log_abs_s)))``: every value of its trainable
parameters is an invertible ``W`` with ``log|det W| = sum(log_abs_s)``, computed in O(d).

The lesson's claims are checked from behaviour, never from names: ActNorm's first batches are
drawn here with random per-channel means and scales (a fixed answer cannot fit them); its
bijection checks run after it initialised on such a batch, so its parameters are far from the
identity. Invertible1x1's structure shows in its map: it is linear, and after re-drawing every
trainable parameter at random (a permutation or signs kept as trainable parameters, a full
``L`` or ``U`` instead of their triangles, would then break it) its log-det is still
``log|det W|`` of the matrix measured here and its inverse is exact. Both act per pixel on
images (:mod:`glow_images`). Round trips' second direction runs in the layer's twin.
"""

from __future__ import annotations

import pytest
import torch
from glow_images import (
    apply_affine,
    expect_acts_per_pixel,
    expect_image_log_det,
    expect_standardized,
    fitted_affine,
    image_pair,
    skewed_batch,
)
from maf_structure import MOVED

from autograder.checks import LayerCase, expect_pair, expect_tensor, max_error
from autograder.grading import remote

SHAPES = [(64, 3), (40, 6), (6, 3, 4, 4)]  # features, and images (batch, C, H, W)
DIRECTIONS = ("forward", "inverse")


def standard_tol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-4


def actnorm(modules, channels: int, dtype: torch.dtype, key: str, first: tuple[int, ...]):
    """An ActNorm, initialised (by ``forward``) on a skewed first batch of shape ``first``."""
    flow = modules.glow.ActNorm(channels)
    flow.to(dtype=dtype)
    batch = skewed_batch(first, f"ActNorm/{key}").to(dtype)
    name = f"ActNorm({channels}).forward on its first batch"
    expect_standardized(image_pair(flow(batch), name, first)[0], name, standard_tol(dtype))
    return flow


def actnorm_case(features: int) -> LayerCase:
    """ActNorm(features) after its first batch: far from the identity, with no re-drawing."""

    def build(m):
        flow = m.glow.ActNorm(features).to(dtype=torch.float64)
        first = skewed_batch((32, features), f"case/{features}")
        name = f"ActNorm({features}).forward on its first batch"
        out, _ = image_pair(flow(first), name, first.shape)
        expect_standardized(out, name, standard_tol(torch.float64))  # only an ActNorm goes on
        return flow

    return LayerCase(
        f"ActNorm({features}) initialised",
        build,
        features,
        batch=32,  # later batches as large and as skewed as the first (see skewed_batch)
        randomize=None,
        sampler=lambda n, generator: skewed_batch((n, features), generator),
    )


def lu_case(features: int, randomize: float | None = 0.3) -> LayerCase:
    drawn = "fresh" if randomize is None else f"parameters ~ N(0, {randomize}^2)"
    return LayerCase(
        f"Invertible1x1({features}), {drawn}",
        lambda m: m.glow.Invertible1x1(features),
        features,
        randomize=randomize,
    )


def expect_learned_matrix(flow, name: str, features: int, dtype: torch.dtype) -> None:
    """With its parameters re-drawn at random, an Invertible1x1's W (measured as the images of
    the unit vectors) is no permutation: W = P L U' with random triangles is dense. So a layer
    that is the identity or a fixed permutation earns none of the checks after this one."""
    basis = torch.cat([torch.zeros(1, features), torch.eye(features)]).to(dtype)
    out, _ = expect_pair(flow(basis), f"{name}.forward", *basis.shape)
    W = (out[1:] - out[:1]).double()
    permutation = bool(((W.abs() > 1e-6).sum(1) == 1).all()) and bool(
        ((W.abs() - 1).abs() < 1e-6).sum() == features
    )
    assert not permutation, (
        f"{name}: with its trainable parameters re-drawn at random, W = P L (U + diag(sign * "
        f"exp(log_abs_s))) should be a dense learned matrix; it is a permutation of the inputs "
        f"(the identity, a fixed P), so the layer does not use L, U or log_abs_s"
    )


def layer_of(case: LayerCase, modules, dtype: torch.dtype):
    """The case's layer, an Invertible1x1 with re-drawn parameters checked to be one first."""
    flow = case.layer(modules, dtype)
    if case.name.startswith("Invertible1x1") and case.randomize is not None:
        expect_learned_matrix(flow, case.name, case.features, dtype)
    return flow


@pytest.mark.weight(3)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_actnorm_standardizes_its_first_batch(modules, dtype, shape, direction):
    """ActNorm's output on its first batch (random means and scales per channel) has zero mean
    and unit variance per feature (channel), and its log-det is H*W * sum(log_scale) of the
    scales it chose"""
    flow = modules.glow.ActNorm(shape[1])
    flow.to(dtype=dtype)
    batch = skewed_batch(shape, f"first/{shape}/{direction}").to(dtype)
    name = f"ActNorm({shape[1]}).{direction} on a first batch of shape {shape}"
    out, log_det = image_pair(getattr(flow, direction)(batch), name, shape)
    expect_standardized(out, name, standard_tol(dtype))
    a, _ = fitted_affine(batch, out)
    pixels = batch[0, 0].numel()
    expected = pixels * a.log().sum()
    error = max_error(log_det, expected.expand(shape[0]))
    assert error < standard_tol(dtype), (
        f"{name}: each channel was scaled by exp(log_scale) = {a.tolist()}, so log|det J| of "
        f"each sample is H * W * sum(log_scale) = {float(expected):.6f}; got {log_det.tolist()}"
    )


@pytest.mark.weight(3)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES[::2], ids=str)
def test_actnorm_initialises_once(modules, dtype, tol, shape, direction):
    """After its first batch ActNorm keeps its parameters: a later batch (other means and
    scales), in either direction, goes through the same affine map"""
    flow = modules.glow.ActNorm(shape[1])
    flow.to(dtype=dtype)
    name = f"ActNorm({shape[1]})"
    first = skewed_batch(shape, f"once/{shape}/{direction}").to(dtype)
    out, _ = image_pair(getattr(flow, direction)(first), f"{name}.{direction}", shape)
    expect_standardized(out, f"{name}.{direction} on its first batch", standard_tol(dtype))
    a, b = fitted_affine(first, out)
    later = 10 * skewed_batch(shape, f"later/{shape}/{direction}").to(dtype) + 5
    got, _ = image_pair(getattr(flow, direction)(later), f"{name}.{direction}", shape)
    expected = apply_affine(a, b, later)
    error = max_error(got, expected)
    assert error < 1e3 * tol, (
        f"{name}.{direction}: initialisation happens on the first batch only; a second batch "
        f"should go through the map set then, but it differs from it by up to {error:.3g} (was "
        "it initialised again?)"
    )
    other = [d for d in DIRECTIONS if d != direction][0]
    got, _ = image_pair(getattr(flow, other)(later), f"{name}.{other}", shape)
    expected = apply_affine(1 / a, -b / a, later)
    error = max_error(got, expected)
    assert error < 1e3 * tol, (
        f"{name}: initialised by {direction}, its {other} should be the inverse of that map, "
        f"not initialise again; it differs from it by up to {error:.3g}"
    )


@pytest.mark.weight(2)
def test_actnorm_state_dict_keeps_initialisation(modules, check, dtype):
    """A copy of an initialised ActNorm rebuilt from its state_dict does not initialise again
    (whether it is initialised is part of its state)"""
    flow = actnorm(modules, 4, dtype, "state", (48, 4))
    x = skewed_batch((48, 4), "state/x").to(dtype)
    check.faithful_twin(flow, x, "ActNorm(4) after its first batch")


@pytest.mark.weight(2)
def test_actnorm_parameters_train(modules, check):
    """After its first batch ActNorm's shift and scale are ordinary trainable parameters:
    autograd's gradients match finite differences, and re-drawing them changes the map"""
    flow = actnorm(modules, 3, torch.float64, "train", (40, 3))
    x = skewed_batch((40, 3), "train/x")
    check.gradients(flow, x, "ActNorm(3) after its first batch")
    before, _ = expect_pair(flow(x), "ActNorm(3).forward", 40, 3)
    remote.randomize(flow, 1234)
    after, _ = expect_pair(flow(x), "ActNorm(3).forward", 40, 3)
    assert max_error(before, after) > MOVED, (
        "ActNorm(3): re-drawing its trainable parameters did not change its output; its shift "
        "and scale should be trainable parameters (torch.nn.Parameter) that the map uses"
    )


ACTNORM_CASES = [actnorm_case(3), actnorm_case(5)]
LU_CASES = [lu_case(2), lu_case(3), lu_case(5), lu_case(8, 1.0), lu_case(4, None)]
BIJECTIONS = ACTNORM_CASES + LU_CASES


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", BIJECTIONS, ids=str)
def test_invertible(case, modules, check, dtype):
    """Each layer's inverse undoes its forward exactly, and the other way round"""
    flow = layer_of(case, modules, dtype)
    check.invertible(flow, case.inputs("invertible", dtype), case.name)


@pytest.mark.weight(2)
@pytest.mark.parametrize("case", BIJECTIONS, ids=str)
def test_log_det_matches_jacobian(case, modules, check, dtype):
    """log|det J| of each layer equals that of its Jacobian, per sample, both directions"""
    flow = layer_of(case, modules, dtype)
    check.log_det_matches_jacobian(flow, case.inputs("log-det", dtype), case.name)


@pytest.mark.parametrize("case", BIJECTIONS[1:5], ids=str)
def test_log_dets_negate_and_batch_independent(case, modules, check, dtype):
    """Forward and inverse log-dets are opposite, and each sample is transformed on its own"""
    flow = layer_of(case, modules, dtype)
    check.log_dets_negate(flow, case.inputs("negate", dtype), case.name)
    check.batch_independent(flow, case.inputs("batch", dtype), case.name)


@pytest.mark.weight(3)
@pytest.mark.parametrize("features", [3, 6])
def test_1x1_is_lu_parametrised(modules, check, features):
    """Invertible1x1 is linear, x = z @ W.T; for every value of its trainable parameters (three
    random draws) W is invertible, its inverse exact and log|det| = log|det W| of the matrix
    measured here: the LU form (fixed P, unit-triangular L, diagonal sign * exp(log_abs_s))"""
    flow = modules.glow.Invertible1x1(features)
    flow.to(dtype=torch.float64)
    name = f"Invertible1x1({features})"
    generator = torch.Generator().manual_seed(features)
    determinants = []
    for seed in (11, 12, 13):
        remote.randomize(flow, seed, 0.8)
        z = torch.randn(5, features, generator=generator, dtype=torch.float64)
        basis = torch.cat([torch.zeros(1, features, dtype=torch.float64), torch.eye(features)])
        points = torch.cat([basis, z, 2 * z[:1] - 3 * z[1:2]])
        out, log_det = expect_pair(flow(points), f"{name}.forward", *points.shape)
        W = (out[1 : features + 1] - out[:1]).T.double()  # column j: f(e_j) - f(0)
        drawn = f"{name} with parameters drawn at seed {seed}"
        assert float(out[0].abs().max()) < 1e-9, (
            f"{drawn}: a 1x1 convolution is linear, x = z @ W.T, so f(0) = 0; got {out[0].tolist()}"
        )
        error = max_error(out[features + 1 :], points[features + 1 :] @ W.T)
        assert error < 1e-8, (
            f"{drawn}: a 1x1 convolution is linear, x = z @ W.T; f(z) differs from z @ W.T "
            f"(W measured as the images of the unit vectors) by {error:.3g}"
        )
        expected = float(torch.linalg.slogdet(W).logabsdet)
        error = max_error(log_det, torch.full_like(log_det, expected))
        assert error < 1e-8, (
            f"{drawn}: log|det J| should be log|det W| = {expected:.6f} for every sample, "
            f"whatever the parameters (the LU form guarantees it); got {log_det[:3].tolist()}"
        )
        check.invertible(flow, z, drawn)
        determinants.append(expected)
    spread = max(determinants) - min(determinants)
    assert spread > 1e-3, (
        f"{name}: W is learned, so re-drawing its trainable parameters should change W and "
        f"its determinant; log|det W| stayed {determinants[0]:.6f} over three draws (a fixed "
        "matrix, a permutation say, is not a 1x1 convolution that trains)"
    )


@pytest.mark.weight(2)
def test_1x1_trains_every_entry(modules, probes):
    """W = P L U' has d^2 free entries: moving Invertible1x1's trainable parameters moves W in
    every direction of the d x d matrices (no triangle of L or U left out), measured here"""
    features = 3
    flow = lu_case(features, 0.5).layer(modules, torch.float64)
    name = f"Invertible1x1({features})"
    basis = torch.cat([torch.zeros(1, features, dtype=torch.float64), torch.eye(features)])
    report = probes.gradient_of_mean(flow, flow, basis, output=0)
    count = int(expect_tensor(report["parameters"], f"{name}'s gradient").numel())
    generator = torch.Generator().manual_seed(17)

    def weight(direction: torch.Tensor, step: float) -> torch.Tensor:
        moved = probes.moved_parameters_call(flow, flow, direction, step, basis)
        out, _ = expect_pair(moved, f"{name}.forward", *basis.shape)
        return (out[1:] - out[:1]).double().flatten()  # W.T, flattened

    eps, moves = 1e-6, []
    for _ in range(max(count, features * features)):
        direction = torch.randn(count, dtype=torch.float64, generator=generator)
        moves.append((weight(direction, eps) - weight(direction, -eps)) / (2 * eps))
    singular = torch.linalg.svdvals(torch.stack(moves)) if moves else torch.zeros(1)
    rank = int((singular > 1e-6 * max(float(singular[0]), 1e-12)).sum())
    assert rank == features * features, (
        f"{name}: W = P L (U + diag(sign * exp(log_abs_s))) has {features * features} free "
        f"entries (the strict triangles of L and U and the diagonal), so training can move W in "
        f"every direction; moving its {count} trainable parameter entries moves W in only "
        f"{rank} (is a triangle of L or U, or the diagonal, left out of W?)"
    )


def test_1x1_log_det_is_linear_time(modules, check):
    """With 512 channels Invertible1x1's log-det is still log|det W| and forward computes no
    determinant, inverse or Jacobian; inverse may invert or solve with W (once per call, not
    per sample), but takes its log-det from the LU form too"""
    features = 512
    flow = layer_of(lu_case(features, 0.05), modules, torch.float32)
    name = f"Invertible1x1({features})"
    basis = torch.cat([torch.zeros(1, features), torch.eye(features)])
    out, log_det = expect_pair(flow(basis), f"{name}.forward", *basis.shape)
    W = (out[1:] - out[:1]).T.double()
    expected = float(torch.linalg.slogdet(W).logabsdet)
    assert abs(float(log_det[0]) - expected) < 1e-2 * max(1.0, abs(expected)), (
        f"{name}: log|det J| should be log|det W| = {expected:.4f}; got {float(log_det[0]):.4f}"
    )
    x = torch.randn(8, features, generator=torch.Generator().manual_seed(5))
    check.cheap(flow, x, name, ("forward",))
    solves = {"inverse", "linalg_inv", "linalg_inv_ex", "linalg_solve", "linalg_lu_factor"}
    check.cheap(flow, x, name, ("inverse",), allowed=solves | {"linalg_lu"})


IMAGE_SHAPES = [(6, 3, 2, 2), (2, 2, 3, 4)]


@pytest.mark.weight(3)
@pytest.mark.parametrize("layer", ["ActNorm", "Invertible1x1"])
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=str)
def test_images(modules, check, dtype, tol, jacobian_tol, layer, shape):
    """On images (batch, C, H, W) each layer transforms the C channels of every pixel by its
    (batch, C) map, log-det H*W times one pixel's (against the whole image Jacobian), and its
    twin inverts it"""
    channels = shape[1]
    if layer == "ActNorm":
        flow = actnorm(modules, channels, dtype, f"images/{shape}", shape)
    else:
        flow = layer_of(lu_case(channels), modules, dtype)
    name = f"{layer}({channels})"
    images = skewed_batch(shape, f"images/{layer}/{shape}").to(dtype)
    out, _ = expect_acts_per_pixel(flow, images, name, "forward", tol)
    expect_acts_per_pixel(flow, images, name, "inverse", tol)
    for direction in DIRECTIONS:
        expect_image_log_det(flow, images, name, direction, jacobian_tol)
    twin = check.faithful_twin(flow, skewed_batch((24, channels), f"twin/{shape}").to(dtype), name)
    back, _ = image_pair(twin.inverse(out), f"{name}.inverse (its twin) on images", shape)
    error = max_error(back, images)
    assert error < tol, (
        f"{name} on images: f^-1(f(v)) should give back v; the largest difference is "
        f"{error:.3g} (f^-1 asked of a rebuilt copy)"
    )


@pytest.mark.weight(2)
def test_1x1_gradients_flow(modules, check):
    """Training needs gradients: autograd's gradients of Invertible1x1's outputs and log-dets
    (w.r.t. its parameters and its input) match finite differences"""
    case = lu_case(3)
    flow = layer_of(case, modules, torch.float64)
    check.gradients(flow, case.inputs("gradients"), case.name)
