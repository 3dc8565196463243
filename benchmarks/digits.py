"""The reference on the 8x8 digits: held-out bits/dim and anomaly-detection AUROC, over seeds.

For each seed: build ``flows.digits.make_flow()`` under ``torch.manual_seed(seed)``, fit it with
the reference ``flows.train.train`` to ``COPIES`` dequantizations of the training split (one
thread, as the grader runs it), then score, on the held-out split dequantized with a fixed
generator, the bits per dimension and the AUROC of ``-log p(x)`` (higher = more anomalous) of
held-out digits against each out-of-distribution set:

* ``noise4``, ``noise1``: held-out digits plus Gaussian noise of std 4 (or 1) grey levels,
  rounded and clipped to 0..16;
* ``inverted``: ``16 - x``;
* ``shuffled``: each held-out digit with its 64 pixels in a random order (same histogram);
* ``upside_down``, ``mirrored``: rows, or columns, in reverse order;
* ``shifted``: moved two pixels to the right (zeros come in on the left);
* ``uniform``: images of i.i.d. uniform grey levels 0..16.

    nice -n 5 python benchmarks/digits.py                       # 5 seeds, default settings
    nice -n 5 python benchmarks/digits.py --seeds 0 1 2 --steps 1500 --batch-size 256
    python benchmarks/digits.py --json out.json                 # every number, for thresholds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
# The grader's AUROC (Mann-Whitney, ties counted half), so the figures here are the suite's.
sys.path.insert(0, str(REPO / "tests" / "hidden" / "normalizing_flows"))
from digits_task import auroc  # noqa: E402

SOLUTION = REPO / "solutions" / "normalizing_flows"
LEVELS, DIMS = 17, 64
STEPS, BATCH_SIZE, LR, COPIES = 2000, 256, 1e-3, 16


def ood_sets(test: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Integer images in 0..16 that are not (plain) digits, one per held-out digit."""
    generator = torch.Generator().manual_seed(seed)
    images = test.view(-1, 8, 8)
    shifted = torch.zeros_like(images)
    shifted[:, :, 2:] = images[:, :, :-2]  # two pixels to the right, zeros come in
    order = torch.stack([torch.randperm(DIMS, generator=generator) for _ in test])
    return {
        "noise4": (test + 4.0 * torch.randn(test.shape, generator=generator)).round(),
        "noise1": (test + 1.0 * torch.randn(test.shape, generator=generator)).round(),
        "inverted": LEVELS - 1 - test,
        "shuffled": test.gather(1, order),  # same grey levels, pixels in random places
        "upside_down": images.flip(1).reshape(test.shape),
        "mirrored": images.flip(2).reshape(test.shape),
        "shifted": shifted.reshape(test.shape),
        "uniform": torch.randint(LEVELS, test.shape, generator=generator),
    }


def independent_pixels() -> torch.nn.Module:
    """A weak baseline: ActNorm then the logit, i.e. every pixel on its own (no coupling)."""
    from flows.composition import Sequential
    from flows.dequantize import Logit
    from flows.glow import ActNorm

    return Sequential(ActNorm(DIMS), Logit(alpha=0.05))


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, object]:
    """Train the reference once under ``seed`` and score it."""
    from flows.base import standard_normal
    from flows.change_of_variables import log_prob
    from flows.data import digits
    from flows.dequantize import bits_per_dim, dequantize
    from flows.digits import make_flow
    from flows.train import train

    torch.manual_seed(seed)
    noise = torch.Generator().manual_seed(10_000 + seed)
    data = dequantize(digits("train").repeat(args.copies, 1), LEVELS, noise)
    flow = make_flow() if args.model == "reference" else independent_pixels()
    started = time.perf_counter()
    losses = train(
        flow,
        data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device="cpu",
        seed=seed,
    )
    seconds = time.perf_counter() - started
    flow.eval()
    base = standard_normal(DIMS)
    held_out = digits("test")
    fixed = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        nll_in = -log_prob(flow, base, dequantize(held_out, LEVELS, fixed)).double()
        result: dict[str, object] = {
            "seed": seed,
            "train_s": round(seconds, 2),
            "last_loss": round(statistics.fmean(losses[-50:]), 3),
            "bits_per_dim": round(bits_per_dim(nll_in.mean(), DIMS, LEVELS), 4),
            "finite": bool(torch.isfinite(nll_in).all()),
        }
        for name, images in ood_sets(held_out).items():
            images = images.clamp(0, LEVELS - 1).long()
            nll_out = -log_prob(flow, base, dequantize(images, LEVELS, fixed)).double()
            nll_out = torch.nan_to_num(nll_out, nan=float("inf"))
            result[f"auroc_{name}"] = round(auroc(nll_in, nll_out), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--copies", type=int, default=COPIES, help="dequantizations of train")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=["reference", "independent"], default="reference")
    parser.add_argument("--json", type=Path, help="write every seed's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SOLUTION))
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args))
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "finite")]
    settings = {k: v for k, v in vars(args).items() if k not in ("seeds", "json")}
    print(
        "settings:", " ".join(f"{k}={v}" for k, v in settings.items()), f"torch={torch.__version__}"
    )
    for key in keys:
        values = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        print(f"{key:>16}: min {min(values):.4f}  mean {statistics.fmean(values):.4f}  "
              f"max {max(values):.4f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None}, "runs": rows}))


if __name__ == "__main__":
    main()
