"""Self-checks for flows/dequantize.py: uniform noise, the logit flow, bits per dimension."""

import math

import torch
from torch.autograd.functional import jacobian

from flows.dequantize import Logit, bits_per_dim, dequantize

DOUBLE = {"dtype": torch.float64}


def test_dequantize_fills_each_level_cube():
    """(x + u) / K lies in [x / K, (x + 1) / K), with fresh noise from the generator given."""
    x = torch.arange(17).repeat(20)  # every level 0..16, 20 times
    y = dequantize(x, 17, torch.Generator().manual_seed(0))
    assert y.is_floating_point() and y.shape == x.shape, (
        f"dequantize of {tuple(x.shape)} integers should give floats of the same shape; got "
        f"{y.dtype} of shape {tuple(y.shape)}"
    )
    levels = torch.floor(y * 17).long()
    assert torch.equal(levels, x) and bool((y >= 0).all() and (y < 1).all()), (
        "dequantize(x, 17) should be (x + u) / 17 with u in [0, 1): floor(17 y) must give x back "
        f"and y lie in [0, 1); for x = {x[:5].tolist()} got y = {y[:5].tolist()}"
    )
    spread = float((y * 17 - x).std())
    assert 0.2 < spread < 0.4, (
        "the noise u should be uniform on [0, 1) (std 0.29), drawn anew for every entry; the "
        f"noise added has std {spread:.3f}"
    )
    again = dequantize(x, 17, torch.Generator().manual_seed(0))
    other = dequantize(x, 17, torch.Generator().manual_seed(1))
    assert torch.equal(again, y) and not torch.equal(other, y), (
        "dequantize should draw its noise from the generator it is given: the same seed gives "
        "the same result, another seed another one"
    )


def test_logit_flow_is_invertible_with_exact_log_dets():
    """Logit.inverse is logit(alpha + (1 - 2 alpha) x); forward undoes it; log-dets match."""
    flow = Logit(alpha=0.05)
    x = torch.tensor([[0.0, 0.5, 0.999], [0.25, 0.1, 0.9]], **DOUBLE)
    z, logdet = flow.inverse(x)
    p = 0.05 + 0.9 * x
    expected = torch.log(p / (1 - p))
    assert torch.allclose(z, expected), (
        "Logit(0.05).inverse(x) should be logit(0.05 + 0.9 x) = log(p / (1 - p)); for x = "
        f"{x[0].tolist()} expected {expected[0].tolist()}, got {z[0].tolist()}"
    )
    J = jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
    target = torch.linalg.slogdet(J).logabsdet
    assert tuple(logdet.shape) == (2,) and torch.allclose(logdet[0], target), (
        "Logit.inverse's log|det J| should be sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)] "
        f"per sample: autograd says {target.item():.4f}, got {logdet.tolist()}"
    )
    x_back, forward_logdet = flow.forward(z)
    assert torch.allclose(x_back, x) and torch.allclose(forward_logdet, -logdet), (
        "Logit.forward should map z back to x, (sigmoid(z) - alpha) / (1 - 2 alpha), with the "
        f"opposite log-det; got x = {x_back[0].tolist()} and log-dets {forward_logdet.tolist()}"
    )


def test_logit_flow_on_images_sums_every_pixel():
    """On (batch, C, H, W) the log-det sums over every non-batch entry."""
    flow = Logit(alpha=0.05)
    x = torch.rand(2, 1, 3, 3, **DOUBLE, generator=torch.Generator().manual_seed(0))
    _, logdet = flow.inverse(x)
    _, flat = flow.inverse(x.flatten(1))
    assert tuple(logdet.shape) == (2,) and torch.allclose(logdet, flat), (
        "Logit acts entry by entry: its log-det on images of shape (1, 3, 3) should be the one "
        f"on the 9 flattened pixels, {flat.tolist()}; got {logdet.tolist()}"
    )


def test_bits_per_dim_counts_the_dequantization():
    """A uniform density on [0, 1)^d (NLL 0) is log2(K) bits/dim: a uniform guess."""
    uniform = bits_per_dim(0.0, 64, 17)
    assert isinstance(uniform, float) and math.isclose(uniform, math.log2(17)), (
        "bits_per_dim(0.0, dims=64, levels=17) should be (0 / 64 + ln 17) / ln 2 = "
        f"{math.log2(17):.4f} bits (a uniform guess over 17 levels); got {uniform!r}"
    )
    value = bits_per_dim(torch.tensor(-64.0), 64, 17)
    expected = (-1.0 + math.log(17)) / math.log(2)
    assert math.isclose(value, expected), (
        "bits_per_dim(nll=-64 nats, dims=64, levels=17) should be (nll / dims + ln 17) / ln 2 = "
        f"{expected:.4f}; got {value!r}"
    )
