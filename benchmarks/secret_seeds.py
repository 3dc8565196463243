"""The reference graded N times in a row, each under a fresh secret task: does it keep full marks?

Each grading is the real command line (``python -m autograder grade``) on a copy of the reference,
into a fresh output folder and a throw-away gradebook, so nothing is resumed and every run's
harness draws its own secret seed (:mod:`secrets`), hence its own random map of two moons
(``tests/hidden/normalizing_flows/test_train.py``). Reported: how many gradings gave the part(s)
full marks, the held-out NLL each convergence test ended with (on the plain moons' scale: the
secret map's ``log|det A|`` taken off; a test passes at <= 0.6 nats), and seconds per grading.
Every failure is printed with its message, which names the secret seed that reproduces it
(``AUTOGRADER_SECRET_SEED=<seed> autograder grade ...``).

``--per-try`` measures what the threshold's comment quotes instead: the reference trained
in this process (no grader) under N fresh secret tasks, one try per task and model, on the test's
own settings, builders and task (imported from the hidden suite): how often one try ends above
the threshold, and the largest window median of the loss after the fast-fail rule starts.

    python benchmarks/secret_seeds.py                 # 50 gradings of the train part
    python benchmarks/secret_seeds.py -n 10 --all-parts
    python benchmarks/secret_seeds.py --per-try -n 40 # 40 tasks x 2 models, one try each
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "normalizing_flows"
MODELS = ("RealNVP", "MAF")


def reference_copy(root: Path) -> Path:
    """The reference's student files in a submission folder (the grader adds the given ones)."""
    from autograder.config import load_course
    from autograder.examples import REFERENCE, materialize

    return materialize(load_course(REPO).assignment(ASSIGNMENT), REFERENCE, root / REFERENCE)


def grade_once(submission: Path, root: Path, index: int, parts: list[str]) -> dict[str, Any]:
    """One ``autograder grade`` of ``submission``: its wall time and its ``grading.json``."""
    out = root / f"out-{index:03d}"
    command = [sys.executable, "-m", "autograder", "grade", ASSIGNMENT, str(submission)]
    command += ["--out", str(out), "--db", f"sqlite:///{root / 'gradebook.db'}"]
    command += [arg for part in parts for arg in ("--part", part)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    found = sorted(out.glob("*/grading.json"))
    if not found:
        tail = (done.stdout + done.stderr).strip()[-500:]
        return {"wall_s": wall, "graded": None, "problem": f"no grading.json: {tail}"}
    return {"wall_s": wall, "graded": json.loads(found[0].read_text()), "problem": ""}


def summary(result: dict[str, Any], points: dict[str, float], parts: list[str]) -> dict[str, Any]:
    """Full marks or not, the convergence tests' NLLs and the failed tests' messages."""
    graded = result["graded"]
    if graded is None:
        return {"full": False, "nll": {}, "failed": [result["problem"]]}
    row = graded.get("row", {})
    full = all(row.get(part) == points[part] for part in parts)
    nll = {}
    for artifact in graded["run"].get("artifacts", []):
        model = artifact["data"].get("model")
        if artifact["name"] == f"{model}_density" and "nll" in artifact["data"]:
            nll[model] = float(artifact["data"]["nll"])
    failed = [
        f"{t['nodeid']}: {t['status']}: {t['message']}"
        for t in graded["run"]["tests"]
        if t["status"] not in ("passed", "skipped")
    ]
    return {"full": full, "nll": nll, "failed": failed}


def per_try(runs: int) -> int:
    """Train the reference stacks under ``runs`` fresh secret tasks, one try each; report."""
    import secrets

    import torch

    sys.path[:0] = [
        str(REPO / "solutions" / ASSIGNMENT),
        str(REPO / "tests" / "hidden" / ASSIGNMENT),
    ]
    import test_train as suite

    from flows import base, composition, coupling, maf
    from flows.train import train

    torch.set_num_threads(1)
    modules = {"coupling": coupling, "composition": composition, "maf": maf, "given": base}
    nlls: dict[str, list[float]] = {m: [] for m in suite.MODELS}
    worst: dict[str, float] = dict.fromkeys(suite.MODELS, -math.inf)
    for index in range(runs):
        task = suite.Task.draw(secrets.randbits(62))
        held_out = task.sample(suite.N_TEST, 100)
        for model, (build, _, _) in suite.MODELS.items():
            seed = task.seed(0)
            torch.manual_seed(seed)
            flow, data = build(modules), task.sample(suite.N_TRAIN, 0).float()
            steps = dict(steps=suite.STEPS, batch_size=suite.BATCH, lr=suite.LR, seed=seed)
            losses = train(flow, data, device="cpu", **steps)
            with torch.no_grad():
                z, log_det = flow.double().inverse(held_out)
            log_p = suite.normal_log_prob(z) + log_det
            nlls[model].append(float(-log_p.mean()) - task.log_det)
            window = suite.STOP_WINDOW
            medians = (
                statistics.median(losses[k - window : k])
                for k in range(suite.STOP_AFTER, suite.STEPS + 1)
            )
            worst[model] = max(worst[model], max(medians) - task.log_det)
        shown = ", ".join(f"{m} {v[-1]:.3f}" for m, v in nlls.items())
        print(f"[{index + 1}/{runs}] log|det A| {task.log_det:+.3f}, NLL {shown}")
    for model, values in nlls.items():
        above = sum(not v <= suite.THRESHOLD for v in values)
        print(
            f"{model}: {above}/{len(values)} tries above {suite.THRESHOLD} nats; {describe(values)}"
        )
        print(
            f"{model}: largest window median of the loss after step {suite.STOP_AFTER}: "
            f"{worst[model]:.3f} (stop bound {suite.STOP_ABOVE})"
        )
    return 0


def describe(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"min {ordered[0]:.3f}, median {statistics.median(ordered):.3f}, 90th percentile "
        f"{p90:.3f}, max {ordered[-1]:.3f} (n={len(ordered)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=50, help="gradings (default 50)")
    parser.add_argument("--all-parts", action="store_true", help="grade every part, not train")
    parser.add_argument("--jsonl", type=Path, help="also append one line per grading here")
    parser.add_argument("--per-try", action="store_true", help="train here, one try per task")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.per_try:
        return per_try(args.runs)
    from autograder.config import load_course

    points = dict(load_course(REPO).assignment(ASSIGNMENT).parts)
    parts = list(points) if args.all_parts else ["train"]
    walls: list[float] = []
    nlls: dict[str, list[float]] = {m: [] for m in MODELS}
    passes = 0
    with tempfile.TemporaryDirectory(prefix="bench-secret-") as tmp:
        root = Path(tmp)
        submission = reference_copy(root)
        for index in range(args.runs):
            result = grade_once(submission, root, index, [] if args.all_parts else parts)
            info = summary(result, points, parts)
            walls.append(result["wall_s"])
            passes += info["full"]
            for model, value in info["nll"].items():
                nlls.setdefault(model, []).append(value)
            verdict = "full marks" if info["full"] else "SHORT"
            shown = ", ".join(f"{m} {v:.3f}" for m, v in info["nll"].items())
            print(f"[{index + 1}/{args.runs}] {verdict}, {result['wall_s']:.1f} s, NLL {shown}")
            for line in info["failed"]:
                print(f"    {line}")
            if args.jsonl:
                with args.jsonl.open("a") as sink:
                    sink.write(json.dumps({"wall_s": result["wall_s"], **info}) + "\n")
    print(f"\n{passes}/{args.runs} gradings gave {'+'.join(parts)} full marks")
    for model, values in nlls.items():
        print(f"{model} held-out NLL (nats, moons' scale): {describe(values)}")
    print(f"seconds per grading: {describe(walls)}")
    return 0 if passes == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
