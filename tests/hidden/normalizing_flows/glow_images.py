"""Checks of Glow's layers on images ``(batch, C, H, W)`` and on ActNorm's first batch (used by
``test_glow.py``).

On an image a Glow layer applies one map to the ``C`` channels of each of the ``H * W`` pixels:
its output at a pixel is the layer's ``(batch, C)`` output for that pixel's channels, and its
log-det is the sum over the pixels, ``H * W`` times one pixel's for these layers. The image
checks compare the two calls (the ``(batch, C)`` one checked on its own by the bijection checks)
and measure the whole image Jacobian here on small images.
"""

from __future__ import annotations

import zlib

import torch

from autograder.checks import expect_tensor, jacobians, kind, log_abs_dets, max_error
from autograder.grading.remote import Handle


def seeded(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def pixels_as_rows(images: torch.Tensor) -> torch.Tensor:
    """``(n, C, H, W)`` -> ``(n * H * W, C)``: one row per pixel, image by image."""
    return images.movedim(1, -1).reshape(-1, images.shape[1])


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` rows of every sample and pixel of ``t`` (features or images)."""
    return pixels_as_rows(t) if t.dim() > 2 else t


def skewed_batch(shape: tuple[int, ...], key: str | torch.Generator) -> torch.Tensor:
    """A float64 batch far from standard: per channel a random mean in [-4, 4] and standard
    deviation in [e^-1.5, e^1.5], drawn here from ``key`` (a constant answer cannot fit it).

    ActNorm's first batches and the batches it sees afterwards are all of this kind and of
    similar sizes, so a layer cannot tell a grader's first batch from a later one."""
    generator = seeded(key) if isinstance(key, str) else key
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    mean = (8 * torch.rand(channels, generator=generator, dtype=torch.float64) - 4).view(view)
    log_std = (3 * torch.rand(channels, generator=generator, dtype=torch.float64) - 1.5).view(view)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    return mean + log_std.exp() * noise


def image_pair(out, what: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow's ``(output of shape, log|det J| (batch,))``, finite (the image twin of
    ``expect_pair``)."""
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{what} should return a pair (output, log|det J|), got {kind(out)}"
    )
    y = expect_tensor(out[0], f"the output of {what}", shape, finite=True)
    log_det = expect_tensor(out[1], f"log|det J| of {what} (one per sample)", shape[:1])
    return y, expect_tensor(log_det, f"log|det J| of {what}", finite=True)


def fitted_affine(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel ``(a, b)`` with ``after = a * before + b``, read off the two batches' means
    and standard deviations (any std convention cancels)."""
    rows_in, rows_out = per_channel(before).double(), per_channel(after).double()
    a = rows_out.std(0) / rows_in.std(0)
    return a, rows_out.mean(0) - a * rows_in.mean(0)


def apply_affine(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    view = (1, -1) + (1,) * (v.dim() - 2)
    return v.double() * a.view(view) + b.view(view)


def expect_acts_per_pixel(
    flow: Handle, images: torch.Tensor, name: str, direction: str, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow.<direction>`` on images is its ``(batch, C)`` map at every pixel, and its log-det
    the sum over the pixels (``H * W`` times one pixel's). Returns the image outputs."""
    n, channels, height, width = images.shape
    label = f"{name}.{direction} on images {tuple(images.shape)}"
    out, log_det = image_pair(getattr(flow, direction)(images), label, tuple(images.shape))
    rows, row_dets = image_pair(
        getattr(flow, direction)(pixels_as_rows(images)),
        f"{name}.{direction} on the same pixels as rows ({n * height * width}, {channels})",
        (n * height * width, channels),
    )
    error = max_error(pixels_as_rows(out), rows)
    assert error < tol, (
        f"{label}: each pixel's {channels} channels should be transformed by the same map as a "
        f"({channels},)-feature sample; the outputs differ by up to {error:.3g}"
    )
    expected = row_dets.double().reshape(n, height * width).sum(-1)
    error = max_error(log_det, expected)
    assert error < tol, (
        f"{label}: log|det J| is the sum over the {height * width} pixels, H * W times one "
        f"pixel's; expected {expected.tolist()}, got {log_det.tolist()}"
    )
    return out, log_det


def expect_image_log_det(
    flow: Handle, images: torch.Tensor, name: str, direction: str, tol: float
) -> None:
    """log|det J| on images against the whole ``C*H*W`` Jacobian, measured here."""
    shape = tuple(images.shape)
    label = f"{name}.{direction} on images {shape}"
    method = getattr(flow, direction)

    def flat(v: torch.Tensor) -> torch.Tensor:
        out, _ = image_pair(method(v.reshape(-1, *shape[1:])), label, (v.shape[0], *shape[1:]))
        return out.reshape(v.shape[0], -1)

    _, log_det = image_pair(method(images), label, shape)
    expected = log_abs_dets(jacobians(flat, images.reshape(shape[0], -1)))
    error = max_error(log_det, expected)
    assert error < tol, (
        f"{label}: log|det J| should equal log|det| of the whole image Jacobian (measured by "
        f"finite differences), {expected.tolist()}; got {log_det.tolist()}"
    )


def expect_standardized(
    out: torch.Tensor, name: str, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean and unit variance per channel (population variance, or the sample variance
    with Bessel's correction: both read "unit variance")."""
    rows = per_channel(out).double()
    count = rows.shape[0]
    mean, var = rows.mean(0), rows.var(0, correction=0)
    unit = min(float((var - 1).abs().max()), float((var * count / (count - 1) - 1).abs().max()))
    assert float(mean.abs().max()) < tol and unit < tol, (
        f"{name} should initialise its parameters from that batch so that its output has mean 0 "
        f"and variance 1 per feature (channel); got means {mean.tolist()} and variances "
        f"{var.tolist()}"
    )
    return mean, var
