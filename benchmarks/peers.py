"""Peer benchmark (issue 15, item 7): the reference flows against zuko's, same size, same data.

Two sections, each a race of a reference model and its peer, trained side by side by one loop
(:class:`training.Training`: Adam, the same lr, batch and seeded minibatches), alternating
windows of ``WINDOW`` steps so that a change of load on a shared machine hits both alike, one
torch thread (the grader's setting), CPU:

**moons**: ``two_moons(noise=0.05)``, 20,000 training points per seed, the 20,000 held-out
points of ``seed=1000``; the hidden convergence test's depth and budget (``LAYERS``, ``STEPS``,
``BATCH``, ``LR`` read from ``tests/hidden/normalizing_flows/test_train.py``) and its builders:

- RealNVP: ``LAYERS`` x ``AffineCoupling`` (alternating masks) vs zuko's ``NICE`` (which in
  zuko is affine coupling, ``MonotonicAffineTransform``, with alternating checkered masks:
  zuko 1.2 has no additive coupling, so our NICE has no like-for-like peer there);
- MAF: ``LAYERS`` x ``MAF`` with ``Reverse`` between vs zuko's ``MAF`` (orders alternate);

both at width ``[64, 64]``. Figures: steps/s, held-out NLL (nats), and the floor (a perfect
model's NLL on the same held-out points, :mod:`moons_density`).

**digits**: the 8x8 digits as ``benchmarks/digits.py`` uses them (``COPIES`` dequantizations of
the training split per seed, the held-out split dequantized by a fixed generator, its ``STEPS``,
``BATCH_SIZE``, ``LR``): ``flows.digits.make_flow()`` vs zuko's ``MAF`` and ``NICE`` on 64
features, 4 transforms, each at the hidden width whose parameter count is nearest ours, behind
the same ``Logit(0.05)`` (so every model's density is on the same dequantized data). Figures:
steps/s and held-out bits/dim.

Each figure is the median over ``--seeds`` (a seed sets the data, the initialisation and the
minibatches), with its range; a rate is first the median over the seed's timed windows (all
but the first, a warm-up). Two rates: steps per wall-clock second, and steps per second of the
training thread's CPU time (``time.thread_time``; one torch thread, so that is all the work a
step costs), which a busy shared machine distorts far less than wall-clock time.

    nice -n 5 python benchmarks/peers.py                        # seeds 0 1 2, both sections
    python benchmarks/peers.py --only digits --seeds 0 --steps 400   # smoke run
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits as digits_bench  # noqa: E402  (benchmarks/ first on the path)
from moons_density import perfect_nll  # noqa: E402
from report import machine_lines  # noqa: E402
from training import SOLUTION, Settings, ZukoDensity, race  # noqa: E402

HIDDEN = Path(__file__).resolve().parents[1] / "tests" / "hidden" / "normalizing_flows"
WINDOW = 100
N_MOONS, MOONS_TEST_SEED, NOISE = 20_000, 1000, 0.05
DIGIT_TRANSFORMS = 4


def flows() -> dict[str, ModuleType]:
    """The reference ``flows`` modules (the solution folder on ``sys.path``)."""
    if str(SOLUTION) not in sys.path:
        sys.path.insert(0, str(SOLUTION))
    names = ("base", "change_of_variables", "composition", "coupling", "maf", "data")
    names += ("dequantize", "digits")
    return {name: importlib.import_module(f"flows.{name}") for name in names}


def hidden_train() -> ModuleType:
    """The hidden suite's ``test_train.py``: its depth, budget and builders."""
    sys.path.insert(0, str(HIDDEN))  # its own imports: secret_task, moons_floor
    spec = importlib.util.spec_from_file_location("hidden_test_train", HIDDEN / "test_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Ours(torch.nn.Module):
    """A reference flow under ``N(0, I)``: ``log p`` by ``flows.change_of_variables``."""

    def __init__(self, flow: torch.nn.Module, dims: int) -> None:
        super().__init__()
        f = flows()
        self.flow, self.base = flow, f["base"].standard_normal(dims)
        self._log_prob = f["change_of_variables"].log_prob

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(self.flow, self.base, x)


class BehindLogit(torch.nn.Module):
    """A zuko flow on ``logit`` space: ``log p(x) = log p_zuko(z) + log|dz/dx|``, with
    ``(z, log|dz/dx|) = Logit(0.05).inverse(x)``, the reference's first layer on digits."""

    def __init__(self, flow: torch.nn.Module) -> None:
        super().__init__()
        self.logit, self.flow = flows()["dequantize"].Logit(alpha=0.05), ZukoDensity(flow)

    def log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self.logit.inverse(x)
        return self.flow.log_prob(z) + log_det


# ---------------------------------------------------------------------------------------------
# The contenders.


def moons_models(hidden: ModuleType) -> dict[str, dict[str, Callable[[], torch.nn.Module]]]:
    import zuko

    f = flows()
    modules = {"coupling": f["coupling"], "composition": f["composition"], "maf": f["maf"]}
    modules["given"] = f["base"]
    width = [64, 64]
    return {
        "RealNVP": {
            "ours": lambda: Ours(hidden.MODELS["RealNVP"][0](modules), 2),
            "zuko NICE (affine)": lambda: ZukoDensity(
                zuko.flows.NICE(2, transforms=hidden.LAYERS, hidden_features=width)
            ),
        },
        "MAF": {
            "ours": lambda: Ours(hidden.MODELS["MAF"][0](modules), 2),
            "zuko MAF": lambda: ZukoDensity(
                zuko.flows.MAF(2, transforms=hidden.LAYERS, hidden_features=width)
            ),
        },
    }


def nearest_width(make: Callable[[int], torch.nn.Module], target: int) -> int:
    """The hidden width (two hidden layers) whose parameter count is nearest ``target``."""
    return min(range(16, 257, 4), key=lambda w: abs(parameters(make(w)) - target))


def digits_models() -> dict[str, dict[str, Callable[[], torch.nn.Module]]]:
    import zuko

    make_flow = flows()["digits"].make_flow
    target = parameters(make_flow())
    peers = {"zuko MAF": zuko.flows.MAF, "zuko NICE (affine)": zuko.flows.NICE}
    contenders: dict[str, Callable[[], torch.nn.Module]] = {"ours": lambda: Ours(make_flow(), 64)}
    for name, kind in peers.items():

        def make(w: int, kind=kind) -> torch.nn.Module:
            return kind(64, transforms=DIGIT_TRANSFORMS, hidden_features=[w, w])

        width = nearest_width(make, target)
        contenders[f"{name}, width {width}"] = lambda make=make, w=width: BehindLogit(make(w))
    return {"digits": contenders}


# ---------------------------------------------------------------------------------------------
# Races.


def run_race(
    makers: dict[str, Callable[[], torch.nn.Module]],
    data: Tensor,
    settings: Settings,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Every contender from ``seed``, trained side by side; its rate and the model itself."""
    models = {}
    for name, make in makers.items():
        torch.manual_seed(seed)
        models[name] = make()
    fits = race(models, data, None, settings, settings.steps, seed)
    return {
        name: {
            "rate": statistics.median(fits[name].rates),
            "cpu_rate": statistics.median(fits[name].cpu_rates),
            "params": parameters(model),
            "model": model,
        }
        for name, model in models.items()
    }


def held_out_nll(model: torch.nn.Module, x: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(-model.log_prob(x).double().mean())


def moons(seeds: list[int], steps: int | None) -> list[dict]:
    hidden = hidden_train()
    two_moons = flows()["data"].two_moons
    settings = Settings(
        steps=steps or hidden.STEPS, window=WINDOW, batch_size=hidden.BATCH, lr=hidden.LR
    )
    test = two_moons(N_MOONS, noise=NOISE, seed=MOONS_TEST_SEED)
    records = []
    for model, makers in moons_models(hidden).items():
        for seed in seeds:
            data = two_moons(N_MOONS, noise=NOISE, seed=seed)
            for name, fit in run_race(makers, data, settings, seed).items():
                nll = held_out_nll(fit.pop("model"), test)
                records.append({"section": "moons", "pair": model, "model": name, "seed": seed,
                                "nll": nll, **fit})  # fmt: skip
                print(json.dumps(records[-1]), flush=True)
    floor = perfect_nll(test, NOISE)
    records.append({"section": "moons", "pair": "floor", "model": "true density", "nll": floor})
    return records


def digits(seeds: list[int], steps: int | None) -> list[dict]:
    f = flows()
    levels, dims = digits_bench.LEVELS, digits_bench.DIMS
    settings = Settings(
        steps=steps or digits_bench.STEPS,
        window=WINDOW,
        batch_size=digits_bench.BATCH_SIZE,
        lr=digits_bench.LR,
    )
    dequantize, train_split = f["dequantize"].dequantize, f["data"].digits("train")
    test = dequantize(f["data"].digits("test"), levels, torch.Generator().manual_seed(12345))
    records = []
    for pair, makers in digits_models().items():
        for seed in seeds:
            noise = torch.Generator().manual_seed(10_000 + seed)  # as benchmarks/digits.py
            data = dequantize(train_split.repeat(digits_bench.COPIES, 1), levels, noise)
            for name, fit in run_race(makers, data, settings, seed).items():
                nll = held_out_nll(fit.pop("model"), test)
                bpd = f["dequantize"].bits_per_dim(nll, dims, levels)
                records.append({"section": "digits", "pair": pair, "model": name, "seed": seed,
                                "bits_per_dim": bpd, **fit})  # fmt: skip
                print(json.dumps(records[-1]), flush=True)
    return records


# ---------------------------------------------------------------------------------------------
# The table.


def spread(values: list[float], digits: int) -> str:
    """``median (min-max)``."""
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(records: list[dict]) -> str:
    """One Markdown row per (section, pair, model): median and range over the seeds."""
    lines = [
        "| data | pair | model | parameters | steps/s (1 thread) | steps per CPU s | held-out |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["section"], record["pair"], record["model"]), []).append(record)
    for (section, pair, model), rows in groups.items():
        metric = "nll" if section == "moons" else "bits_per_dim"
        unit = "nats" if section == "moons" else "bits/dim"
        quality = f"{spread([r[metric] for r in rows], 3)} {unit}"
        if "rate" not in rows[0]:
            lines.append(f"| {section} | {pair} | {model} | | | | {quality} |")
            continue
        rate = spread([r["rate"] for r in rows], 0)
        cpu = spread([r["cpu_rate"] for r in rows], 0) if "cpu_rate" in rows[0] else ""
        lines.append(
            f"| {section} | {pair} | {model} | {rows[0]['params']} | {rate} | {cpu} | {quality} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps (default: each section's)")
    parser.add_argument("--only", choices=["moons", "digits"], action="append")
    parser.add_argument("--json", type=Path, help="write every record here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = machine_lines(1, "cpu")
    started = time.perf_counter()
    records = []
    for section in args.only or ["moons", "digits"]:
        records += (moons if section == "moons" else digits)(args.seeds, args.steps)
    print("\n".join(header))
    print(f"seeds {args.seeds}; {time.perf_counter() - started:.0f} s in all\n")
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
