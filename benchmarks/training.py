"""Training benchmark: the reference MAF and RealNVP against zuko's MAF and normflows' RealNVP.

Every model is a density ``log p_X(x) = log p_Z(f^{-1}(x)) + log|det J_{f^{-1}}(x)|`` under a
fixed ``N(0, I)`` base, trained by one shared loop (Adam, same lr, batch, steps, minibatches
drawn by a seeded generator) on ``two_moons(noise=0.05)``. The reference models are built by the
hidden suite's own builders (``tests/hidden/normalizing_flows/test_train.py``: its depth
``LAYERS``), at the reference layers' default width; the peers are built to the same size:

- zuko ``MAF(2, transforms=LAYERS, hidden_features=[width] * num_hidden)`` (its orders alternate
  ascending/descending, as ``Reverse`` between the reference's MAF layers does);
- normflows ``AffineCouplingBlock(MLP([1, width, ..., 2], init_zeros=True))`` + ``Permute(swap)``
  per layer (the swap plays the reference's alternating masks).

Speed is steps per second in timed windows after a warm-up window (median); quality is the
held-out NLL at checkpoints, beside the floor from :mod:`moons_density`.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import torch
from moons_density import entropy, perfect_nll
from report import Row, median, verdict
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "normalizing_flows"
HIDDEN = REPO / "tests" / "hidden" / "normalizing_flows"
NOISE = 0.05
TEST_SEED = 1000  # held-out seed of the peer races; training sets use the run's seeds
# Secret seeds of the hidden-budget rows: fixed here, so that a rerun trains on the same tasks.
BUDGET_SECRETS = (0, 1, 2)
FLOOR_MARGIN = 0.1  # nats: the target for the hidden suite's step budget


@dataclass(frozen=True)
class Settings:
    """Sizes of one training benchmark run (the defaults are the full run)."""

    steps: int = 5000
    checkpoints: tuple[int, ...] = (2000, 5000)  # held-out NLL after these steps
    window: int = 100  # steps per timed window; checkpoints are multiples of it
    batch_size: int = 256
    lr: float = 1e-3
    # NLLs are medians over these; a seed costs 4 x 5,000 steps (about 3 minutes on 2 cores).
    seeds: tuple[int, ...] = (0,)
    n_train: int = 20_000
    n_test: int = 20_000
    thread_windows: int = 6  # timed windows of the multi-thread rate (after one warm-up)

    def quick(self) -> Settings:
        """A smoke run: minutes become seconds, figures become rough."""
        return replace(
            self,
            steps=400,
            checkpoints=(200, 400),
            window=25,
            n_test=4000,
            thread_windows=1,
        )


# ---------------------------------------------------------------------------------------------
# The contenders: each a module with ``log_prob(x) -> (batch,)``.


def solution_modules() -> dict[str, ModuleType]:
    """The reference ``flows`` modules, imported with the solution folder on ``sys.path``."""
    if str(SOLUTION) not in sys.path:
        sys.path.insert(0, str(SOLUTION))
    names = ("base", "change_of_variables", "composition", "coupling", "data", "maf", "train")
    return {name: importlib.import_module(f"flows.{name}") for name in names}


def hidden_train_suite() -> ModuleType:
    """``test_train.py`` of the hidden suite, for its builders and budget (its folder goes on
    ``sys.path`` for its own imports: ``secret_task``, ``moons_floor``)."""
    if str(HIDDEN) not in sys.path:
        sys.path.insert(0, str(HIDDEN))
    spec = importlib.util.spec_from_file_location("hidden_test_train", HIDDEN / "test_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceDensity(torch.nn.Module):
    """A reference flow under ``N(0, I)``, its density by ``flows.change_of_variables``."""

    def __init__(self, flow: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        flows = solution_modules()
        self.flow = flow.to(device)
        self.base = flows["base"].standard_normal(2, device=device)
        self._log_prob = flows["change_of_variables"].log_prob

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(self.flow, self.base, x)


class ZukoDensity(torch.nn.Module):
    """zuko's lazy flow: ``flow()`` builds the distribution, as zuko's own training loop does."""

    def __init__(self, flow: torch.nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    num_hidden: int


def reference_size(hidden: ModuleType) -> Size:
    """The hidden suite's depth, at the width the reference layers use by default."""
    flows = solution_modules()
    defaults = {
        name: inspect.signature(cls).parameters[name].default
        for cls in (flows["coupling"].AffineCoupling, flows["maf"].MAF)
        for name in ("hidden_features", "num_hidden")
    }
    return Size(hidden.LAYERS, defaults["hidden_features"], defaults["num_hidden"])


def reference_flow(model: str, hidden: ModuleType) -> torch.nn.Module:
    """A fresh reference ``model`` ("RealNVP" or "MAF"), built by the hidden suite's builder."""
    build = hidden.MODELS[model][0]
    flows = solution_modules()
    return build(flows | {"given": flows["base"]})  # the suite's builders take modules by part


def reference(model: str, hidden: ModuleType) -> Callable[[Size, torch.device], torch.nn.Module]:
    """A maker of the reference ``model`` as a density (its size is the hidden suite's)."""
    return lambda size, device: ReferenceDensity(reference_flow(model, hidden), device)


def zuko_maf(size: Size, device: torch.device) -> torch.nn.Module:
    import zuko

    hidden = [size.width] * size.num_hidden
    return ZukoDensity(zuko.flows.MAF(2, transforms=size.layers, hidden_features=hidden)).to(device)


def normflows_realnvp(size: Size, device: torch.device) -> torch.nn.Module:
    import normflows as nf

    layers: list[torch.nn.Module] = []
    for _ in range(size.layers):
        net = nf.nets.MLP([1] + [size.width] * size.num_hidden + [2], init_zeros=True)
        layers += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(2, mode="swap")]
    base = nf.distributions.DiagGaussian(2, trainable=False)
    return nf.NormalizingFlow(base, layers).to(device)


@dataclass(frozen=True)
class Pair:
    model: str  # "MAF" or "RealNVP"
    peer_name: str
    peer: Callable[[Size, torch.device], torch.nn.Module]


PAIRS = (Pair("MAF", "zuko", zuko_maf), Pair("RealNVP", "normflows", normflows_realnvp))


# ---------------------------------------------------------------------------------------------
# One training loop for every model.


@dataclass
class Fit:
    rates: list[float] = field(default_factory=list)  # steps/s of each timed window
    # steps per second of this thread's CPU time: on one torch thread, what the steps cost
    # whatever else the machine runs (wall-clock rates on a loaded machine are not)
    cpu_rates: list[float] = field(default_factory=list)
    nll: dict[int, float] = field(default_factory=dict)  # held-out NLL after n steps


class Training:
    """One model's training run (Adam on minibatch NLLs), advanced a window at a time."""

    def __init__(self, model: torch.nn.Module, data: Tensor, settings: Settings, seed: int):
        self.model, self.data, self.batch_size = model, data, settings.batch_size
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        self.generator = torch.Generator(device=data.device).manual_seed(seed)
        self.cpu_seconds = 0.0  # this thread's CPU time in the last ``advance``

    def advance(self, steps: int) -> float:
        """Train ``steps`` steps; returns their wall time (the device synchronized)."""
        device = self.data.device
        _sync(device)
        start, cpu_start = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            index = torch.randint(
                len(self.data), (self.batch_size,), device=device, generator=self.generator
            )
            loss = -self.model.log_prob(self.data[index]).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        _sync(device)
        self.cpu_seconds = time.thread_time() - cpu_start
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def held_out_nll(model: torch.nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return float(-model.log_prob(x).mean())


def race(
    models: dict[str, torch.nn.Module],
    data: Tensor,
    test: Tensor | None,
    settings: Settings,
    steps: int,
    seed: int,
) -> dict[str, Fit]:
    """Train the models side by side, alternating windows, so a change of load on a shared
    machine hits both alike. The first window is a warm-up; the others are timed."""
    runs = {side: Training(model, data, settings, seed) for side, model in models.items()}
    fits = {side: Fit() for side in models}
    done = 0
    while done < steps:
        n = min(settings.window, steps - done)
        for side, run in runs.items():
            seconds = run.advance(n)
            if done > 0:
                fits[side].rates.append(n / seconds)
                fits[side].cpu_rates.append(n / max(run.cpu_seconds, 1e-9))
        done += n
        if test is not None and done in settings.checkpoints:
            for side, run in runs.items():
                fits[side].nll[done] = held_out_nll(run.model, test)
    return fits


# ---------------------------------------------------------------------------------------------
# The benchmark.


def _contenders(pair: Pair, hidden: ModuleType, device: torch.device, seed: int) -> dict:
    """Fresh reference and peer models, each initialized from ``seed``."""
    models = {}
    for side, make in (("ours", reference(pair.model, hidden)), ("peer", pair.peer)):
        torch.manual_seed(seed)
        models[side] = make(reference_size(hidden), device)
    return models


def _rate_row(model: str, peer: str, what: str, rates: tuple[float, float]) -> Row:
    ours, theirs = rates
    return Row(
        "training", f"{model} steps/s ({what})", ours, theirs, peer, "steps/s", ">= peer",
        verdict(ours >= theirs, f"{1 - ours / theirs:.0%}"),
    )  # fmt: skip


def compare(settings: Settings, device: torch.device, threads: int) -> list[Row]:
    """Rates and NLLs of each reference model beside its peer."""
    hidden = hidden_train_suite()
    size = reference_size(hidden)
    two_moons = solution_modules()["data"].two_moons
    test = two_moons(settings.n_test, noise=NOISE, seed=TEST_SEED).to(device)
    where = "1 thread" if device.type == "cpu" else device.type
    rows = []
    for pair in PAIRS:
        fits: dict[str, list[Fit]] = {"ours": [], "peer": []}
        for seed in settings.seeds:
            data = two_moons(settings.n_train, noise=NOISE, seed=seed).to(device)
            models = _contenders(pair, hidden, device, seed)
            for side, f in race(models, data, test, settings, settings.steps, seed).items():
                fits[side].append(f)
        rates = tuple(median(r for f in fits[side] for r in f.rates) for side in fits)
        described = f"{where}; {size.layers} layers, width {size.width}x{size.num_hidden}, "
        rows.append(
            _rate_row(pair.model, pair.peer_name, described + f"batch {settings.batch_size}", rates)
        )
        if device.type == "cpu" and threads > 1:
            # torch's default thread count: a short race, no checkpoints.
            torch.set_num_threads(threads)
            models = _contenders(pair, hidden, device, 0)
            data = two_moons(settings.n_train, noise=NOISE, seed=0)
            steps = settings.window * (settings.thread_windows + 1)
            fit = race(models, data, None, settings, steps, 0)
            torch.set_num_threads(1)
            rates = tuple(median(fit[side].rates) for side in fit)
            rows.append(_rate_row(pair.model, pair.peer_name, f"{threads} threads", rates))
        for step in settings.checkpoints:
            nll = [median(f.nll[step] for f in fits[side]) for side in fits]
            rows.append(
                Row(
                    "training", f"{pair.model} held-out NLL after {step} steps "
                    f"(lr {settings.lr}, median of {len(settings.seeds)} seed(s))",
                    nll[0], nll[1], pair.peer_name, "nats",
                )
            )  # fmt: skip
    return rows + floor_rows(test.cpu())


def floor_rows(test: Tensor) -> list[Row]:
    """The floor two ways: quadrature entropy, and a perfect model's NLL on this test set."""
    h, mass = entropy(NOISE)
    if abs(mass - 1) > 1e-6:
        raise RuntimeError(f"the two-moons density integrates to {mass}, not 1: grid too coarse")
    return [
        Row(
            "training",
            f"floor: perfect model's NLL on the {len(test)} test points",
            perfect_nll(test, NOISE),
            h,
            "entropy by quadrature",
            "nats",
        )
    ]


def hidden_budget(device: torch.device, all_seeds: bool = True) -> list[Row]:
    """The reference trained as the hidden convergence test trains it (first try), vs the floor.

    Each secret seed of ``BUDGET_SECRETS`` is one secret task (``secret_task.Task``): its
    training data, held-out set and torch seed are the test's first try's. NLLs and floors are on
    the plain moons' scale (``log|det A|`` taken off), as the test reports them; the figure is
    the median over the tasks (``all_seeds``; else the first task only).
    """
    hidden = hidden_train_suite()
    from moons_floor import floor  # on sys.path from hidden_train_suite
    from secret_task import Task

    train = solution_modules()["train"].train
    secrets = BUDGET_SECRETS if all_seeds else BUDGET_SECRETS[:1]
    rows = []
    for model in hidden.MODELS:
        nlls, floors, seconds = [], [], []
        for secret in secrets:
            task = Task.draw(secret)
            seed = task.seed(0)
            torch.manual_seed(seed)
            flow = reference_flow(model, hidden)
            data, held_out = task.sample(hidden.N_TRAIN, 0).float(), task.sample(hidden.N_TEST, 100)
            start = time.perf_counter()
            train(flow, data, steps=hidden.STEPS, batch_size=hidden.BATCH, lr=hidden.LR,
                  device=device, seed=seed)  # fmt: skip
            seconds.append(time.perf_counter() - start)
            density = ReferenceDensity(flow, device)
            nlls.append(held_out_nll(density, held_out.float().to(device)) - task.log_det)
            floors.append(floor(task, held_out))
        nll, lowest = median(nlls), median(floors)
        excess = nll - lowest - FLOOR_MARGIN
        rows.append(
            Row(
                "hidden budget",
                f"{model} NLL, hidden test's budget ({hidden.STEPS} steps, batch "
                f"{hidden.BATCH}, lr {hidden.LR}; secret seeds {list(secrets)}: "
                f"{', '.join(f'{v:.3f}' for v in nlls)}; {median(seconds):.1f} s/run)",
                nll,
                lowest,
                "floor",
                "nats",
                f"<= floor + {FLOOR_MARGIN}",
                verdict(excess <= 0, f"{excess:.3f} nats"),
            )
        )
    return rows


def run(quick: bool, device: torch.device, threads: int, seeds: int = 1) -> list[Row]:
    """Every training figure; 1 thread except the rows that say otherwise."""
    torch.set_num_threads(1)
    settings = replace(Settings(), seeds=tuple(range(seeds)))
    settings = settings.quick() if quick else settings
    return compare(settings, device, threads) + hidden_budget(device, all_seeds=not quick)
