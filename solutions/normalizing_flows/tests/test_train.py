"""Self-checks for flows/train.py: the NLL, a short training run, seeds and the callback."""

import math

import pytest
import torch
from torch import Tensor

from flows.base import Flow, Reverse, standard_normal
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
    assert isinstance(value, Tensor) and value.shape == (), (
        "nll should return a scalar tensor, the mean of -log p_X(x) over the batch; got "
        f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
    )
    assert torch.allclose(value, expected), (
        f"nll of 100 points under x = 2z, z ~ N(0, I) should be {expected.item():.4f} nats "
        f"(-1/N sum_n log p_X(x_n)); got {value.item():.4f}"
    )


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
    kinds = sorted({type(loss).__name__ for loss in losses}) if isinstance(losses, list) else None
    assert isinstance(losses, list) and len(losses) == 150 and kinds == ["float"], (
        "train(..., steps=150) should return a list of 150 Python floats, one loss per step; "
        f"got {type(losses).__name__} of {len(losses)} ({kinds})"
    )
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 0.3, (
        "150 Adam steps on two moons should lower the NLL by more than 0.3 nats: the first 20 "
        f"steps average {first:.3f}, the last 20 {last:.3f}"
    )


class Diagonal(Flow):
    """``x = exp(s) * z + b`` elementwise with learnable ``s``, ``b``: a flow built here, so the
    checks of ``train`` below need only ``nll`` from your code."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.shift = torch.nn.Parameter(torch.zeros(features))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * (-self.log_scale).exp()
        return z, -self.log_scale.sum().expand(x.shape[0])


def gaussian_data() -> Tensor:
    """500 points of N((2, -1), diag(0.5, 2)^2), the same every time."""
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    return torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 2.0]) * noise


def short_run(seed: int, global_seed: int) -> list[float]:
    """20 steps of ``train(..., seed=seed)`` on a fresh ``Diagonal``, after setting torch's
    global random state to ``global_seed`` (which ``train`` must not depend on)."""
    torch.manual_seed(global_seed)
    return train(Diagonal(2), gaussian_data(), steps=20, batch_size=16, device="cpu", seed=seed)


def test_train_is_reproducible():
    """The same flow, data and seed give the same losses, whatever torch's global state."""
    first, again = short_run(seed=3, global_seed=0), short_run(seed=3, global_seed=1)
    assert first == again, (
        "two calls of train(..., seed=3) on identical flows and data should draw the same "
        "minibatches and return the same losses, even when torch's global random state differs "
        "between them: draw the rows with torch.randint(..., generator=g), g a torch.Generator "
        f"seeded with `seed`. The first steps' losses were {first[:2]} and {again[:2]}"
    )


def test_train_seed_chooses_the_minibatches():
    """Another seed draws other minibatches, so the losses differ."""
    seed_0, seed_1 = short_run(seed=0, global_seed=0), short_run(seed=1, global_seed=0)
    assert seed_0 != seed_1, (
        "train(..., seed=0) and train(..., seed=1) returned the same losses, so `seed` does not "
        "choose the minibatches: seed the generator you draw them with, "
        "torch.Generator(device=device).manual_seed(seed)"
    )


def test_train_calls_callback_after_every_step():
    """callback(step, loss) is called once per step, steps 0..steps-1, with that step's loss."""
    calls: list[tuple[object, object]] = []
    torch.manual_seed(0)
    losses = train(
        Diagonal(2),
        gaussian_data(),
        steps=7,
        batch_size=16,
        device="cpu",
        callback=lambda step, loss: calls.append((step, loss)),
    )
    steps = [step for step, _ in calls]
    assert steps == list(range(7)), (
        "train(..., steps=7, callback=f) should call f(step, loss) once after each step, with "
        f"step = 0, 1, ..., 6; it was called with steps {steps}"
    )
    reported = [loss for _, loss in calls]
    kinds = sorted({type(loss).__name__ for loss in reported})
    assert kinds == ["float"], (
        "callback(step, loss) should get that step's loss as a Python float (loss.item()), "
        f"got {kinds}"
    )
    same = all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(reported, losses, strict=True))
    assert same, (
        "callback(step, loss) should get that step's loss, the number train returns at index "
        f"step; it got {[round(v, 4) for v in reported]}, train returned "
        f"{[round(v, 4) for v in losses]}"
    )
