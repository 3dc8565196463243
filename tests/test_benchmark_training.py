"""``benchmarks/training.py`` still runs against the hidden suite it reads its models from.

The training benchmark builds the reference MAF and RealNVP with the hidden convergence test's
own builders and trains them as its first try does (``secret_task.Task``, ``moons_floor``).
Nothing else imports those names from outside the suite, so when the suite changes shape the
benchmark breaks silently; this smoke test keeps it honest. It runs in a child process (the
benchmark puts the solution's ``flows`` package on ``sys.path``, which must not leak into this
session) with the hidden budget cut to a few steps: every figure is computed, none is judged.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPT = """
import json, torch, training
real = training.hidden_train_suite
def few_steps():
    suite = real()
    suite.STEPS = 5  # the budget's figures, not its quality
    return suite
training.hidden_train_suite = few_steps
torch.set_num_threads(1)
suite = real()
log_probs = {}
for model in suite.MODELS:
    torch.manual_seed(0)
    density = training.ReferenceDensity(training.reference_flow(model, suite), torch.device("cpu"))
    log_probs[model] = density.log_prob(torch.randn(7, 2)).shape[0]
rows = training.hidden_budget(torch.device("cpu"), all_seeds=False)
layers = training.reference_size(suite).layers == suite.LAYERS
rows = [[r.metric, r.ours, r.peer] for r in rows]
print(json.dumps({"log_probs": log_probs, "layers": layers, "rows": rows}))
"""


def test_training_benchmark_builds_and_trains_the_hidden_models():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=240,  # about 10 s on an idle core
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["log_probs"] == {"RealNVP": 7, "MAF": 7}
    assert result["layers"], "the benchmark's models have the hidden suite's depth"
    rows = result["rows"]
    assert [metric.split()[0] for metric, _, _ in rows] == ["RealNVP", "MAF"]
    for metric, nll, floor in rows:
        assert math.isfinite(nll), metric
        assert 0.2 < floor < 0.4, f"{metric}: the floor of a 2,000-point held-out set is ~0.29"
