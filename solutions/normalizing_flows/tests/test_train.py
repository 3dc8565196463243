"""Self-checks for flows/train.py: the NLL and a short, reproducible training run."""

import math

import pytest
import torch

from flows.base import Reverse, standard_normal
from flows.change_of_variables import Affine
from flows.composition import Sequential
from flows.coupling import AffineCoupling
from flows.data import two_moons
from flows.train import nll, train


def test_nll_of_a_gaussian():
    """NLL of x = 2z under N(0, I) is the mean of 0.5 (x/2)^2 + 0.5 log(2 pi) + log 2 per dim."""
    flow = Affine(2 * torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = (0.5 * (x / 2) ** 2 + 0.5 * math.log(2 * math.pi) + math.log(2)).sum(1).mean()
    value = nll(flow, standard_normal(2, dtype=torch.float64), x)
    assert value.shape == ()
    assert torch.allclose(value, expected)


def small_realnvp() -> Sequential:
    torch.manual_seed(0)
    mask = torch.tensor([1.0, 0.0])
    return Sequential(AffineCoupling(mask, 16, 1), Reverse(), AffineCoupling(mask, 16, 1))


@pytest.fixture(scope="module")
def run() -> tuple[Sequential, list[float]]:
    flow = small_realnvp()
    return flow, train(flow, two_moons(512), steps=150, batch_size=64, lr=3e-3, device="cpu")


def test_train_returns_decreasing_losses(run):
    """train returns one float loss per step, and the loss goes down."""
    _, losses = run
    assert len(losses) == 150 and all(isinstance(loss, float) for loss in losses)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.3


def test_train_is_reproducible(run):
    """The same flow, data and seed give the same losses."""
    _, losses = run
    assert (
        train(small_realnvp(), two_moons(512), steps=150, batch_size=64, lr=3e-3, device="cpu")
        == losses
    )
