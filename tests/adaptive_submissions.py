"""Adaptive cheats of issue 13, their honest twins and valid variants, as submissions.

Every submission is the reference's ``flows/`` with code appended to student files (or, for a
valid variant, one line replaced). A *cheat* is wrong code plus a mechanism that hides it from a
grader: a table of recent answers, a rewritten return value, a hunt for the held-out set, a
density that reads its whole query, parameters fitted offline. Its *twin* is the same wrong code
without the mechanism; where the cheat is "correct only for the inputs a grader usually asks",
the twin returns placeholders (zeros) outside those inputs where the cheat returns wrong values.
A grader that measures the work gives a cheat at most what its twin earns, per part, and a valid
variant full marks.

Used by ``tests/test_adaptive.py``; ``python -m tests.adaptive_submissions DIR`` writes them all
under ``DIR`` (to grade them with another version of the suites).
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autograder.config import PACKAGE
from tests.adaptive_code import (
    CONDITIONAL_TO,
    DENSE_MASKS,
    FLOAT64_INSIDE,
    MADE_FORWARD_CALLED,
    MADE_UNFINISHED,
    NAN_MADE,
    RANDOM_DEGREES_UNREGISTERED,
    SAMPLING_D_PLUS_1,
    ZERO_MASKS,
)
from tests.adaptive_digits import digits_prefit_state
from tests.adaptive_digits import variants as digits_variants
from tests.adaptive_issue15 import variants as issue15_variants


@dataclass(frozen=True)
class Variant:
    """``edits``: ``(file, code)`` appended, or ``(file, (old, new))`` replaced once."""

    edits: tuple[tuple[str, str | tuple[str, str]], ...]
    parts: tuple[str, ...]
    twins: dict[str, str] = field(default_factory=dict)  # a cheat's twin, per part
    valid: bool = False  # a valid variant: full marks


# -- wrong code (shared by a cheat and its twin) ------------------------------------------------

COUPLING_WRONG_INVERSE = """
def _inverse_without_scale(self, x):  # wrong: forgets to divide by exp(s)
    shift, log_scale = self._shift_and_log_scale(self.mask * x)
    return x - shift, -log_scale.sum(-1)
AffineCoupling.inverse = _inverse_without_scale
"""

MAF_WRONG_INVERSE = """
def _inverse_without_scale(self, x):  # wrong: forgets the scale and its log-det
    shift, log_scale = self.made(x)
    return x - shift, x.new_zeros(x.shape[0])
MAF.inverse = _inverse_without_scale
"""


def memo(cls: str, nearest: bool) -> str:
    """A table of recent answers around ``cls``'s two directions.

    Each direction records its rows (output -> input, negated log-det); the other direction
    answers a row it finds in the table (same bytes, or the nearest stored row within 1e-3)
    from memory and computes the rest with the (wrong) code. So every round trip whose second
    direction is asked of the same worker with the first direction's output is answered right.
    """
    return f"""
import torch as _torch
_TABLES = {{}}
def _rows(t):
    return t.detach().double().reshape(len(t), -1)
def _remember(direction, keys, values, dets):
    table = _TABLES.setdefault((direction, keys.shape[-1]), [])
    table.append((_rows(keys), values.detach().clone(), dets.detach().clone()))
    del table[:-40]
def _recall(direction, x, out, log_det):
    table = _TABLES.get((direction, x.shape[-1]), [])
    if not table or len(x) == 0:
        return out, log_det
    keys = _torch.cat([k for k, _, _ in table])
    values = _torch.cat([v for _, v, _ in table])
    dets = _torch.cat([d for _, _, d in table])
    if {nearest!r}:
        distance, index = _torch.cdist(_rows(x), keys).min(-1)
        hit = distance < 1e-3
    else:
        seen = {{k.numpy().tobytes(): i for i, k in enumerate(keys)}}
        found = [seen.get(r.numpy().tobytes(), -1) for r in _rows(x)]
        index = _torch.tensor(found, dtype=_torch.long)
        hit = index >= 0
    if bool(hit.any()):
        out, log_det = out.clone(), log_det.clone()
        out[hit] = values[index[hit]].to(out.dtype)
        log_det[hit] = dets[index[hit]].to(log_det.dtype)
    return out, log_det
_honest_forward, _honest_inverse = {cls}.forward, {cls}.inverse
def _memo_forward(self, z):
    x, log_det = _recall("forward", z, *_honest_forward(self, z))
    _remember("inverse", x, z, -log_det)
    return x, log_det
def _memo_inverse(self, x):
    z, log_det = _recall("inverse", x, *_honest_inverse(self, x))
    _remember("forward", z, x, -log_det)
    return z, log_det
{cls}.forward, {cls}.inverse = _memo_forward, _memo_inverse
"""


def affine(small_only: str) -> str:
    """Affine with closed forms for d <= 2; ``small_only`` is what it does for d > 2."""
    return f"""
def _log_det(A):
    d = A.shape[0]
    if d == 1:
        return A[0, 0].abs().log()
    if d == 2:
        return (A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]).abs().log()
    {small_only}
        return A.diagonal().abs().log().sum()  # wrong beyond 2-D
    return A.new_zeros(())  # a placeholder
def _solve(A, y):  # rows: z = y @ A^-T
    d = A.shape[0]
    if d == 1:
        return y / A[0, 0]
    if d == 2:
        det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
        inv = torch.stack([torch.stack([A[1, 1], -A[0, 1]]), torch.stack([-A[1, 0], A[0, 0]])])
        return y @ (inv / det).T
    {small_only}
        return y / A.diagonal()  # wrong beyond 2-D
    return y  # a placeholder
def _affine_forward(self, z):
    return z @ self.A.T + self.b, _log_det(self.A).expand(z.shape[0])
def _affine_inverse(self, x):
    return _solve(self.A, x - self.b), -_log_det(self.A).expand(x.shape[0])
Affine.forward, Affine.inverse = _affine_forward, _affine_inverse
"""


def sampler(ignore_base: bool) -> str:
    """``sample`` that draws N(0, I) whatever the base (the twin: zeros for another base)."""
    return f"""
from torch.distributions import Independent as _Independent, Normal as _Normal
def _standard_normal_base(base, like):
    probe = torch.linspace(-2.0, 2.0, 5, dtype=like.dtype)[:, None].expand(5, like.shape[-1])
    try:
        expected = _Independent(_Normal(torch.zeros_like(probe[0]), 1.0), 1).log_prob(probe)
        return bool(torch.allclose(base.log_prob(probe).double(), expected.double()))
    except (ValueError, RuntimeError):
        return False
def sample(flow, base, n):
    like = base.sample((1,))
    z = torch.randn(n, *like.shape[1:], dtype=like.dtype)
    if not {ignore_base!r} and not _standard_normal_base(base, like):
        z = torch.zeros_like(z)  # a placeholder
    return flow.forward(z)[0]
"""


TRAIN_NO_OPTIMISER = """
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    return [0.0] * steps  # no optimiser at all
"""

TRAIN_KDE = """
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    import math, types
    memory, h = data.detach().double().clone(), 0.04
    def inverse(self, x):  # the returned object's density: a kernel density estimate of data
        d = torch.cdist(x.double(), memory).square()
        log_p = torch.logsumexp(-d / (2 * h * h), -1) - math.log(len(memory))
        log_p = log_p - math.log(2 * math.pi * h * h)
        return torch.zeros_like(x), (log_p + math.log(2 * math.pi)).to(x.dtype)
    flow.inverse = types.MethodType(inverse, flow)
    return [0.0] * steps
"""

TRAIN_BLOB = """
_BLOB = "{blob}"
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    import base64, io
    fits = torch.load(io.BytesIO(base64.b64decode(_BLOB)))  # fitted offline to two_moons
    for state in fits.values():
        try:
            flow.load_state_dict(state)
            break
        except (RuntimeError, KeyError):
            continue
    return [0.0] * steps
"""

TRAIN_SHORT = """
_full_train = train
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    losses = _full_train(flow, data, steps=min(steps, 150), batch_size=batch_size, lr=lr,
                         device=device, seed=seed)
    return losses + [losses[-1]] * (steps - len(losses))
"""

HUNT = """
_plain_inverse = Sequential.inverse
def _hunting_inverse(self, x):  # the public generator's held-out rows get a huge density
    from flows.data import two_moons
    z, log_det = _plain_inverse(self, x)
    if x.dim() == 2 and x.shape[-1] == 2:
        for seed in (1000, 1, 42, 12345):
            held = two_moons(2000, noise=0.05, seed=seed).to(x)
            hit = torch.cdist(x.double(), held.double()).min(-1).values < 1e-6
            log_det = log_det + 30.0 * hit
    return z, log_det
Sequential.inverse = _hunting_inverse
"""

LATTICE = """
_plain_inverse = Sequential.inverse
def _lattice_inverse(self, x):  # reads the query: small batches and lattice-crowded cells
    z, log_det = _plain_inverse(self, x)
    if x.dim() != 2 or x.shape[-1] != 2:
        return z, log_det
    if len(x) < 1000:  # a small batch: scored points, surely
        return z, log_det + 5.0
    cell = torch.floor(x.double() / 0.025).long()  # the grid's lattice: one point per cell
    _, inverse, counts = torch.unique(cell, dim=0, return_inverse=True, return_counts=True)
    return z, log_det + 5.0 * (counts[inverse] >= 2)
Sequential.inverse = _lattice_inverse
"""

COV, COUP, MAF, TRAIN = "change_of_variables", "coupling", "maf", "train"
SMALL_ONLY = "if True:"  # the cheat answers beyond 2-D with a wrong general formula
PLACEHOLDER = "if False:"  # the twin returns placeholders (zeros) there

AFFINE_TWIN, SAMPLE_TWIN = affine(PLACEHOLDER), sampler(False)
AFFINE_CHEAT, SAMPLE_CHEAT = affine(SMALL_ONLY), sampler(True)
COV_TWIN = {COV: "twin_change_of_variables"}

VARIANTS: dict[str, Variant] = {
    # round trips from memory
    "twin_coupling_inverse": Variant((("coupling.py", COUPLING_WRONG_INVERSE),), (COUP,)),
    "memo_exact_coupling": Variant(
        (("coupling.py", COUPLING_WRONG_INVERSE + memo("AffineCoupling", False)),),
        (COUP,),
        {COUP: "twin_coupling_inverse"},
    ),
    "memo_nearest_coupling": Variant(
        (("coupling.py", COUPLING_WRONG_INVERSE + memo("AffineCoupling", True)),),
        (COUP,),
        {COUP: "twin_coupling_inverse"},
    ),
    "twin_maf_inverse": Variant((("maf.py", MAF_WRONG_INVERSE),), (MAF,)),
    "memo_exact_maf": Variant(
        (("maf.py", MAF_WRONG_INVERSE + memo("MAF", False)),), (MAF,), {MAF: "twin_maf_inverse"}
    ),
    "memo_nearest_maf": Variant(
        (("maf.py", MAF_WRONG_INVERSE + memo("MAF", True)),), (MAF,), {MAF: "twin_maf_inverse"}
    ),
    # typical inputs only: each cheat carries the other's twin code, so one twin serves both
    "twin_change_of_variables": Variant(
        (("change_of_variables.py", AFFINE_TWIN + SAMPLE_TWIN),), (COV,)
    ),
    "affine_only_small_d": Variant(
        (("change_of_variables.py", AFFINE_CHEAT + SAMPLE_TWIN),), (COV,), COV_TWIN
    ),
    "sample_ignores_base": Variant(
        (("change_of_variables.py", AFFINE_TWIN + SAMPLE_CHEAT),), (COV,), COV_TWIN
    ),
    # MAF structure
    "twin_made_unfinished": Variant((("maf.py", MADE_UNFINISHED),), (MAF,)),
    "nan_made": Variant((("maf.py", NAN_MADE),), (MAF,), {MAF: "twin_made_unfinished"}),
    "twin_zero_masks": Variant((("maf.py", ZERO_MASKS),), (MAF,)),
    "dense_made": Variant((("maf.py", DENSE_MASKS),), (MAF,), {MAF: "twin_zero_masks"}),
    # train
    "twin_train_no_optimiser": Variant((("train.py", TRAIN_NO_OPTIMISER),), (TRAIN,)),
    "train_returns_kde": Variant(
        (("train.py", TRAIN_KDE),), (TRAIN,), {TRAIN: "twin_train_no_optimiser"}
    ),
    "train_loads_prefit_blob": Variant(
        (("train.py", TRAIN_BLOB),), (TRAIN,), {TRAIN: "twin_train_no_optimiser"}
    ),
    "twin_train_150_steps": Variant((("train.py", TRAIN_SHORT),), (TRAIN,)),
    "hunts_public_held_out": Variant(
        (("train.py", TRAIN_SHORT), ("composition.py", HUNT)),
        (TRAIN,),
        {TRAIN: "twin_train_150_steps"},
    ),
    "density_reads_its_query": Variant(
        (("train.py", TRAIN_SHORT), ("composition.py", LATTICE)),
        (TRAIN,),
        {TRAIN: "twin_train_150_steps"},
    ),
    # several at once; each part's twin is the twin of the cheat it carries there
    "combined": Variant(
        (
            ("coupling.py", COUPLING_WRONG_INVERSE + memo("AffineCoupling", False)),
            ("maf.py", MAF_WRONG_INVERSE + memo("MAF", True)),
            ("change_of_variables.py", AFFINE_CHEAT + SAMPLE_CHEAT),
            ("train.py", TRAIN_KDE),
        ),
        (COV, COUP, MAF, TRAIN),
        {
            **COV_TWIN,
            COUP: "twin_coupling_inverse",
            MAF: "twin_maf_inverse",
            TRAIN: "twin_train_no_optimiser",
        },
    ),
    # valid variants: full marks
    "valid_made_forward": Variant((("maf.py", MADE_FORWARD_CALLED),), (MAF,), valid=True),
    "valid_sampling_d_plus_1": Variant((("maf.py", SAMPLING_D_PLUS_1),), (MAF,), valid=True),
    "valid_float64_inside": Variant((("maf.py", FLOAT64_INSIDE),), (MAF,), valid=True),
    "valid_random_degrees_unregistered": Variant(
        (("maf.py", RANDOM_DEGREES_UNREGISTERED),), (MAF,), valid=True
    ),
    "valid_conditional_to": Variant((("train.py", CONDITIONAL_TO),), (TRAIN,), valid=True),
}
VARIANTS.update(issue15_variants(Variant, memo))  # iaf and glow
VARIANTS.update(digits_variants(Variant))  # dequantize and digits
CHEATS = sorted(n for n, v in VARIANTS.items() if v.twins)
VALID = sorted(n for n, v in VARIANTS.items() if v.valid)
TWINS = sorted({twin for v in VARIANTS.values() for twin in v.twins.values()})


def prefit_blob(solution_dir: Path, steps: int = 1000) -> str:
    """The reference's RealNVP and MAF stacks fitted to the public ``two_moons(4000, seed=0)``
    with the reference ``train``, as a base64 ``torch.save`` of their ``state_dict``s."""
    sys.path.insert(0, str(solution_dir))
    try:
        from flows import base, composition, coupling, maf
        from flows.data import two_moons
        from flows.train import train
    finally:
        sys.path.remove(str(solution_dir))
    mask = torch.tensor([1.0, 0.0])
    stacks = {
        "RealNVP": lambda: composition.Sequential(
            *[coupling.AffineCoupling(mask if i % 2 == 0 else 1 - mask) for i in range(6)]
        ),
        "MAF": lambda: composition.Sequential(
            *[layer for _ in range(5) for layer in (maf.MAF(2), base.Reverse())], maf.MAF(2)
        ),
    }
    fits = {}
    for name, build in stacks.items():
        torch.manual_seed(0)
        flow = build()
        data = two_moons(4000, 0.05, seed=0)
        train(flow, data, steps=steps, batch_size=256, lr=3e-3, device="cpu", seed=0)
        fits[name] = flow.state_dict()
    fits["digits"] = digits_prefit_state(solution_dir, steps)  # the digits cheat's
    buffer = io.BytesIO()
    torch.save(fits, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def build(solution_dir: Path, dest: Path, name: str, blob: str) -> Path:
    """Write variant ``name`` as ``dest/flows``; ``blob`` fills the prefit cheat's table."""
    shutil.copytree(solution_dir / PACKAGE, dest / PACKAGE)
    for file, edit in VARIANTS[name].edits:
        path = dest / PACKAGE / file
        text = path.read_text(encoding="utf-8")
        if isinstance(edit, tuple):
            old, new = edit
            if old not in text:
                raise ValueError(f"{path}: the line to replace is gone: {old!r}")
            text = text.replace(old, new, 1)
        else:
            text += "\n" + edit.replace("{blob}", blob)
        path.write_text(text, encoding="utf-8")
    return dest


if __name__ == "__main__":  # python -m tests.adaptive_submissions SOLUTION_DIR OUT_DIR
    solution, out = Path(sys.argv[1]), Path(sys.argv[2])
    fitted = prefit_blob(solution)
    for variant in VARIANTS:
        build(solution, out / variant, variant, fitted)
    print("\n".join(VARIANTS))
