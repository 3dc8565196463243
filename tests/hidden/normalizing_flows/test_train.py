"""Hidden tests of ``flows/train.py``: ``nll`` and ``train``, then two flows trained for real.

``NLL = -1/N sum_n log p_X(x_n)`` under ``p_Z = N(0, I)``. The convergence tests build a RealNVP
and a MAF stack from the student's own classes and train them with the student's ``train`` on
``two_moons(noise=0.05)``; a perfect model scores about 0.3 nats, an untrained one above 2.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from flows.base import Flow, Reverse, standard_normal
from flows.data import two_moons

THRESHOLD = 0.6  # nats, held-out
# More seeds before failing: one unlucky run must not cost the points. A correct train with
# Adam's defaults ends above 0.6 on about 1 seed in 10 (seeds 0-9, 2000 steps); three tries
# make a false failure rare (~0.1%) while a wrong train still fails all three.
SEEDS = (0, 1, 2)
# 2000 steps, not fewer: at 1000 a correct train with Adam's default betas still falls ~0.03
# nats per 50 steps and ended above 0.6 on 5 of 10 seeds. At 2000 it reaches 0.36-0.52 (seeds
# 0-4), about 8-10 s of CPU per model.
STEPS, BATCH, LR, LAYERS = 2000, 256, 3e-3, 6
N_TRAIN, N_TEST, GRID = 4000, 2000, 64


class Diagonal(Flow):
    """``x = exp(s) * z + b`` elementwise, learnable; records every device it is moved to."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.shift = torch.nn.Parameter(torch.zeros(features))
        self.moved_to: list[str] = []

    def _apply(self, fn, *args, **kwargs):
        # A probe tensor shows where this conversion sends tensors; one it cannot take says nothing.
        with contextlib.suppress(Exception):
            self.moved_to.append(fn(torch.zeros(())).device.type)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * (-self.log_scale).exp()
        return z, -self.log_scale.sum().expand(x.shape[0])


def held_out_nll(flow: Flow, x: Tensor) -> float:
    """``-mean log p_X(x)`` computed here, not with the student's ``log_prob``."""
    with torch.no_grad():
        z, log_abs_det = flow.inverse(x)
        base = standard_normal(x.shape[1], device=x.device, dtype=x.dtype)
        return float(-(base.log_prob(z) + log_abs_det).mean())


def gaussian_data(n: int = 2000) -> Tensor:
    return torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 2.0]) * torch.randn(n, 2)


def test_nll_is_mean_negative_log_prob(train):
    """nll(flow, base, x) is -1/N sum_n log p_X(x_n), a differentiable scalar"""
    flow = Diagonal(2).double()
    with torch.no_grad():
        flow.log_scale.copy_(torch.tensor([0.7, -0.4]))
        flow.shift.copy_(torch.tensor([1.0, 2.0]))
    base = standard_normal(2, dtype=torch.float64)
    x = 2 * torch.randn(50, 2, dtype=torch.float64)
    expected = held_out_nll(flow, x)
    got = train.nll(flow, base, x)
    value = float(got.detach()) if isinstance(got, Tensor) else math.nan
    assert isinstance(got, Tensor) and got.dim() == 0, (
        "nll should return a scalar tensor (the mean over the batch), got "
        f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}"
    )
    assert abs(value - expected) < 1e-8, (
        f"nll of 50 points should be -1/N sum_n log p_X(x_n) = {expected:.4f} nats, got {value:.4f}"
    )
    assert got.requires_grad, "nll should be differentiable in the flow's parameters (no .item())"


@pytest.fixture
def fit(train, device) -> tuple[Diagonal, list[float], Tensor]:
    """A ``Diagonal`` flow trained on Gaussian data: its maximum-likelihood fit is known."""
    flow, data = Diagonal(2), gaussian_data()
    losses = train.train(flow, data, steps=300, batch_size=256, lr=0.05, device=device)
    return flow, losses, data


def test_train_returns_one_loss_per_step(fit):
    """train returns the loss of every step, as Python floats"""
    _, losses, _ = fit
    kinds = {type(loss).__name__ for loss in losses} if isinstance(losses, list) else None
    assert isinstance(losses, list) and len(losses) == 300 and kinds == {"float"}, (
        "train(..., steps=300) should return a list of 300 Python floats (loss.item() or "
        f".tolist()), got {type(losses).__name__} of {len(losses)} ({kinds})"
    )


@pytest.mark.weight(2)
def test_train_reaches_maximum_likelihood(fit):
    """train lowers the loss down to the maximum-likelihood fit"""
    flow, losses, data = fit
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 1.0, (
        f"training x = exp(s) z + b on Gaussian data should lower the NLL by more than 1 nat: "
        f"the first 20 steps average {first:.3f}, the last 20 {last:.3f}"
    )
    mle = data.mean(0), data.std(0, unbiased=False)
    best = float(0.5 * math.log(2 * math.pi * math.e) * 2 + mle[1].log().sum())
    got = held_out_nll(flow.cpu(), data)
    assert got < best + 0.02, (
        f"after 300 Adam steps (lr 0.05) a Gaussian fit of this data should reach its "
        f"maximum-likelihood NLL {best:.3f} nats (within 0.02); got {got:.3f}"
    )


@pytest.mark.parametrize("requested", ["option", None], ids=["device", "device=None"])
def test_train_moves_flow_to_device(train, device, requested):
    """train moves the flow to its device (None: CUDA if available, else CPU) and leaves it there"""
    target = device if requested == "option" else None
    expected = (
        device
        if target is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ).type
    flow = Diagonal(2)
    train.train(flow, gaussian_data(64), steps=2, batch_size=8, device=target)
    where = {p.device.type for p in flow.parameters()}
    assert expected in flow.moved_to and where == {expected}, (
        f"train(flow, data, device={None if target is None else repr(target.type)}) should move "
        f"the flow to {expected} (flow.to(device)) and leave it there; it was moved to "
        f"{flow.moved_to or 'nowhere'} and its parameters are on {sorted(where)}"
    )


def test_train_is_reproducible(train, device):
    """train with the same seed, flow and data gives the same losses"""
    data = gaussian_data(500)
    runs = [
        train.train(Diagonal(2), data, steps=20, batch_size=16, device=device, seed=3)
        for _ in range(2)
    ]
    assert runs[0] == runs[1], (
        "two calls of train(..., seed=3) on identical flows and data should draw the same "
        "minibatches and return the same losses (use a generator seeded with `seed`); the first "
        f"step losses were {runs[0][0]:.4f} and {runs[1][0]:.4f}"
    )


# ---------------------------------------------------------------------------------------------
# Convergence: RealNVP and MAF stacks on two moons.


def realnvp(coupling, composition) -> Flow:
    mask = torch.tensor([1.0, 0.0])
    layers = [coupling.AffineCoupling(mask if i % 2 == 0 else 1 - mask) for i in range(LAYERS)]
    return composition.Sequential(*layers)


def maf_stack(maf, composition) -> Flow:
    layers: list[Flow] = []
    for _ in range(LAYERS - 1):
        layers += [maf.MAF(2), Reverse()]
    return composition.Sequential(*layers, maf.MAF(2))


MODELS: dict[str, tuple[Callable, str]] = {
    "RealNVP": (realnvp, f"{LAYERS} AffineCoupling layers with alternating masks"),
    "MAF": (maf_stack, f"{LAYERS} MAF layers with Reverse between them"),
}


def density_artifacts(model: str, flow: Flow, data: Tensor, losses: list[float]) -> dict:
    """The pictures' data: a 64 x 64 log-density grid over the data, points and samples."""
    data = data[:1000].cpu()
    lo, hi = data.min(0).values - 0.25, data.max(0).values + 0.25
    xs, ys = (torch.linspace(float(lo[i]), float(hi[i]), GRID) for i in range(2))
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")  # rows: y, columns: x
    device = next(flow.parameters()).device
    grid = torch.stack([xx.flatten(), yy.flatten()], -1).to(device)
    with torch.no_grad():
        z, log_abs_det = flow.inverse(grid)
        base = standard_normal(2, device=device)
        log_prob = (base.log_prob(z) + log_abs_det).cpu()
        samples, _ = flow(base.sample((1000,)))
    log_prob = torch.nan_to_num(log_prob, nan=-100.0, posinf=100.0, neginf=-100.0).clamp(-100, 100)
    samples = samples.cpu()
    every = max(1, math.ceil(len(losses) / 500))
    return {
        f"{model}_density": {
            "model": model,
            "extent": [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])],
            "log_prob": log_prob.reshape(GRID, GRID).tolist(),
            "data": data.tolist(),
            "samples": samples[torch.isfinite(samples).all(1)].tolist(),
        },
        f"{model}_losses": {
            "model": model,
            "losses": [v if math.isfinite(v) else None for v in losses[::every]],
        },
    }


def converge(model, modules, request, record_artifact, device) -> None:
    build, described = MODELS[model]
    test = two_moons(N_TEST, seed=1000)
    results: list[float] = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        flow = build(*(request.getfixturevalue(name) for name in modules))
        data = two_moons(N_TRAIN, noise=0.05, seed=seed)
        losses = request.getfixturevalue("train").train(
            flow, data, steps=STEPS, batch_size=BATCH, lr=LR, device=device, seed=seed
        )
        where = next(flow.parameters()).device
        if device is None and torch.cuda.is_available():
            assert where.type == "cuda", (
                f"train(..., device=None) on a host with a GPU should train on CUDA and leave the "
                f"flow there; the {model} parameters are on {where}"
            )
        results.append(held_out_nll(flow, test.to(where)))
        if results[-1] <= THRESHOLD:
            break
    for name, data_ in density_artifacts(model, flow, data, losses).items():
        record_artifact(name, data_)
    got = " and ".join(f"{r:.3f}" for r in results)
    assert results[-1] <= THRESHOLD, (
        f"{model} ({described}) trained with your train (steps={STEPS}, batch_size={BATCH}, "
        f"lr={LR}) on two_moons(noise=0.05) should reach a held-out NLL <= {THRESHOLD} nats "
        f"(a perfect model: about 0.3; untrained: above 2); it got {got} "
        f"with {len(results)} seed(s)"
    )


MODULES = {"RealNVP": ("coupling", "composition"), "MAF": ("maf", "composition")}


@pytest.mark.weight(3)
@pytest.mark.parametrize("model", list(MODELS))
def test_converges_on_two_moons(model, request, record_artifact):
    """A RealNVP and a MAF trained with train reach a held-out NLL <= 0.6 nats on two moons"""
    converge(model, MODULES[model], request, record_artifact, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.weight(3)
@pytest.mark.parametrize("model", list(MODELS))
def test_converges_on_two_moons_gpu(model, request, record_artifact):
    """On a GPU host, train(device=None) trains on CUDA and reaches a held-out NLL <= 0.6 nats"""
    converge(model, MODULES[model], request, record_artifact, None)
