"""Self-checks for flows/glow.py: ActNorm's data-dependent start, the LU 1x1 convolution."""

import pytest
import torch
from torch.autograd.functional import jacobian

from flows.glow import ActNorm, Invertible1x1

DOUBLE = {"dtype": torch.float64}


def data(*shape: int, seed: int = 0) -> torch.Tensor:
    """Features far from standard: mean about 3, std about 2, in float64."""
    return 3.0 + 2.0 * torch.randn(*shape, **DOUBLE, generator=torch.Generator().manual_seed(seed))


def per_feature(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance per feature (dim 1), over the batch and every pixel."""
    flat = x.movedim(1, -1).reshape(-1, x.shape[1])
    return flat.mean(0), flat.var(0, correction=0)


@pytest.mark.parametrize("shape", [(64, 5), (8, 3, 4, 4)], ids=["features", "images"])
@pytest.mark.parametrize("direction", ["inverse", "forward"])
def test_actnorm_standardizes_its_first_batch(shape, direction):
    """ActNorm's output on its first batch has zero mean and unit variance per feature."""
    layer = ActNorm(shape[1]).double()
    out, _ = getattr(layer, direction)(data(*shape))
    mean, var = per_feature(out.detach())
    name = f"ActNorm({shape[1]}).{direction} on a first batch of shape {shape}"
    assert mean.abs().max() < 1e-6 and (var - 1).abs().max() < 1e-6, (
        f"{name} should initialise its parameters from that batch so that its output has mean 0 "
        f"and variance 1 per feature (channel); got means {mean.tolist()} and variances "
        f"{var.tolist()}"
    )


def test_actnorm_initialises_once_and_keeps_it_in_its_state_dict():
    """After the first batch the parameters stay; a copy loaded from the state_dict agrees."""
    layer = ActNorm(4).double()
    first, second = data(32, 4), 10.0 * data(32, 4, seed=1)
    with torch.no_grad():
        layer.inverse(first)
        z, _ = layer.inverse(second)
        copy = ActNorm(4).double()
        copy.load_state_dict(layer.state_dict())
        z_copy, _ = copy.inverse(second)
    mean, _ = per_feature(z)
    assert mean.abs().max() > 1, (
        "ActNorm should initialise on its first batch only, then keep its parameters: a second "
        "batch (10 times larger) came out standardized again, so it was initialised twice"
    )
    assert torch.allclose(z_copy, z), (
        "an ActNorm rebuilt with load_state_dict should use the loaded parameters, not "
        "initialise from its own first batch: keep whether it is initialised in a buffer"
    )


def test_actnorm_log_det_on_images():
    """log|det J| of ActNorm on (batch, C, H, W) is H * W * sum(log_scale), per sample."""
    layer = ActNorm(2).double()
    x = data(3, 2, 3, 2)
    with torch.no_grad():
        layer.inverse(x)  # initialise
        z, logdet = layer.inverse(x)
        x_back, forward_logdet = layer.forward(z)
    J = jacobian(lambda v: layer.inverse(v[None])[0][0].flatten(), x[0]).reshape(12, 12)
    expected = torch.linalg.slogdet(J).logabsdet
    assert tuple(logdet.shape) == (3,) and torch.allclose(logdet[0], expected), (
        "ActNorm(2).inverse on images of shape (2, 3, 2) should return one log|det J| per "
        f"sample, -H * W * sum(log_scale): autograd says {expected.item():.4f}, got "
        f"{logdet.tolist()}"
    )
    assert torch.allclose(x_back, x) and torch.allclose(forward_logdet, -logdet), (
        "ActNorm.forward should undo ActNorm.inverse, with the opposite log-det"
    )


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 2, 2)], ids=["features", "images"])
def test_invertible_1x1_is_a_linear_map_with_an_exact_inverse(shape):
    """x = z @ W.T on the channels; the inverse is exact; log|det| matches the matrix's."""
    channels = shape[1]
    layer = Invertible1x1(channels).double()
    with torch.no_grad():
        W = layer.forward(torch.eye(channels, **DOUBLE))[0].T  # column j is W e_j
        z = data(*shape)
        x, logdet = layer.forward(z)
        z_back, inverse_logdet = layer.inverse(x)
    expected = torch.einsum("ij,bj...->bi...", W, z)
    name = f"Invertible1x1({channels}) on shape {shape}"
    assert torch.allclose(x, expected), (
        f"{name}.forward should mix the channels of every pixel with one matrix, x = W z; "
        "it does not act as the same linear map on every pixel"
    )
    error = float((z_back - z).abs().max())
    assert error < 1e-10, (
        f"{name}: inverse(forward(z)) should give back z exactly; the largest difference is "
        f"{error:.3g}"
    )
    pixels = z[0, 0].numel()
    target = pixels * torch.linalg.slogdet(W).logabsdet
    assert torch.allclose(logdet, target.expand(shape[0])), (
        f"{name}: log|det J_f| should be H * W * log|det W| = {target.item():.4f} for every "
        f"sample (log|det W| = sum(log_abs_s) in the LU form); got {logdet.tolist()}"
    )
    assert torch.allclose(inverse_logdet, -logdet), (
        f"{name}: the inverse's log-det should be minus the forward's; got "
        f"{inverse_logdet.tolist()} and {logdet.tolist()}"
    )


def test_invertible_1x1_is_trained_in_lu_form(perturb):
    """Any parameters give an invertible W whose log|det| is still read off its diagonal."""
    layer = perturb(Invertible1x1(4).double(), std=0.4)
    with torch.no_grad():
        W = layer.forward(torch.eye(4, **DOUBLE))[0].T
        _, logdet = layer.forward(torch.zeros(1, 4, **DOUBLE))
    expected = torch.linalg.slogdet(W).logabsdet
    assert torch.allclose(logdet[0], expected), (
        "after training moves its parameters, W = P L (U + diag(sign * exp(log_abs_s))) must "
        "still have log|det W| = sum(log_abs_s): autograd's slogdet of W says "
        f"{expected.item():.4f}, the layer says {logdet[0].item():.4f} (is L unit "
        "lower-triangular and U strictly upper-triangular whatever the parameters?)"
    )


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_glow_layers_need_no_determinant(assert_cheap_log_det, direction):
    """With 512 channels, neither layer computes a determinant, an inverse or a Jacobian."""
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
    for layer in (ActNorm(512), Invertible1x1(512)):
        name = f"{type(layer).__name__}(512)"
        _, log_abs_det = assert_cheap_log_det(layer, direction, x, name)
        assert tuple(log_abs_det.shape) == (4,), (
            f"{name}.{direction} on 4 samples should return one log|det J| per sample, "
            f"shape (4,); got shape {tuple(log_abs_det.shape)}"
        )
