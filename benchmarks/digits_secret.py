"""The reference on the digits part's secret tasks: the numbers behind test_digits' thresholds.

For each secret seed, the task of ``tests/hidden/normalizing_flows/digits_task.py`` (its split,
dequantization and out-of-distribution sets; the frame forced to ``seed % 16`` with ``--every-
frame``, so that 32 seeds try each of the 16 frames twice), the reference ``make_flow()`` trained
in-process with the reference ``train`` under the test's settings, on one thread, and scored
as the test scores its twin (float64, eval mode): held-out bits/dim and the AUROC per set.

    nice -n 5 python benchmarks/digits_secret.py --seeds 0-31 --every-frame --json out.json
    nice -n 5 python benchmarks/digits_secret.py --seeds 0-2 --model independent
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "solutions" / "normalizing_flows"), str(REPO)]
sys.path.insert(0, str(REPO / "tests" / "hidden" / "normalizing_flows"))

from digits_task import OOD, DigitsTask, auroc, bits_per_dim, course_digits  # noqa: E402
from secret_task import normal_log_prob  # noqa: E402
from test_digits import BATCH, LR, STEPS  # noqa: E402


def frame_of(index: int) -> dict[str, object]:
    """Frame number ``index`` (0..15): rotation, mirror, inversion."""
    return {"turns": index % 4, "mirror": bool(index // 4 % 2), "invert": bool(index // 8)}


def build(model: str) -> torch.nn.Module:
    from flows.composition import Sequential
    from flows.dequantize import Logit
    from flows.digits import make_flow
    from flows.glow import ActNorm

    return make_flow() if model == "reference" else Sequential(ActNorm(64), Logit(alpha=0.05))


def run(secret: int, args: argparse.Namespace, images: torch.Tensor) -> dict[str, object]:
    from flows.train import train

    task = DigitsTask.draw(secret)
    if args.every_frame:
        task = dataclasses.replace(task, **frame_of(secret % 16))
    torch.manual_seed(task.seed())
    flow = build(args.model)
    started = time.perf_counter()
    train(
        flow,
        task.training_data(images),
        steps=args.steps,
        batch_size=BATCH,
        lr=LR,
        device="cpu",
        seed=task.seed(),
    )
    seconds = time.perf_counter() - started
    twin = copy.deepcopy(flow).double().eval()
    sets = {"held_out": task.held_out_data(images), **task.ood_data(images)}
    with torch.no_grad():
        log_p = {}
        for name, x in sets.items():
            z, log_det = twin.inverse(x)
            log_p[name] = torch.nan_to_num(normal_log_prob(z) + log_det, nan=-float("inf"))
    result: dict[str, object] = {
        "secret": secret,
        "frame": task.described(),
        "train_s": round(seconds, 2),
        "bits_per_dim": round(bits_per_dim(float(-log_p["held_out"].mean())), 4),
    }
    for name in OOD:
        result[f"auroc_{name}"] = round(auroc(-log_p["held_out"], -log_p[name]), 4)
    return result


def seeds(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seeds, default=seeds("0-3"), help="e.g. 0-31")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--model", choices=("reference", "independent"), default="reference")
    parser.add_argument("--every-frame", action="store_true", help="frame = seed % 16")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, rows = course_digits(), []
    for secret in args.seeds:
        rows.append(run(secret, args, images))
        print(json.dumps(rows[-1]), flush=True)
    for key in ["bits_per_dim", "train_s"] + [f"auroc_{name}" for name in OOD]:
        values = [float(row[key]) for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{key}: {min(values):.4f}-{max(values):.4f}, mean {statistics.fmean(values):.4f}, "
            f"sd {spread:.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
