"""Adaptive cheats of the ``dequantize`` and ``digits`` parts, their honest twins (issue 15).

Used by :mod:`tests.adaptive_submissions` (``VARIANTS`` gains :func:`variants`). The digits
cheats share one twin, ``twin_digits_untrained``: the reference ``make_flow`` and a ``train``
with no optimiser (nothing is learned). Each cheat is that twin plus one mechanism:

- ``digits_train_loads_prefit``: ``train`` loads parameters fitted offline to the public digits
  (in their public frame, the held-out rows included; the blob of :func:`digits_prefit_state`);
- ``digits_make_flow_memorizer``: ``make_flow`` wraps the flow in a table of all 1,797 public
  digits: a query in a public image's cell gets a huge density;
- ``digits_density_reads_its_query``: the density adds 8 nats to every point of a small batch
  (the size the scoring asks in) and nothing to large ones.

``dequantize_answers_from_table``: ``bits_per_dim`` leaves out ``log(levels)`` and ``dequantize``
ignores its generator (the twin), except for the public checks' arguments, answered from a
table (``bits_per_dim(0, 64, 17)``, generators seeded 0 or 1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

DEQ, DIGITS = "dequantize", "digits"

TRAIN_NO_OPTIMISER = """
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    return [0.0] * steps  # no optimiser at all
"""

TRAIN_DIGITS_BLOB = """
_BLOB = "{blob}"
def train(flow, data, *, steps=2000, batch_size=256, lr=1e-3, device=None, seed=0, callback=None):
    import base64, io
    fits = torch.load(io.BytesIO(base64.b64decode(_BLOB)))  # fitted offline to the public digits
    flow.load_state_dict(fits["digits"])
    return [0.0] * steps
"""

MEMORIZER = """
class _Memorizer(Flow):  # the flow, plus a table of every public digit (held-out rows included)
    def __init__(self, flow):
        super().__init__()
        self.flow = flow
        from flows.data import digits
        self.register_buffer("table", digits("all").double())
    def forward(self, z):
        return self.flow.forward(z)
    def inverse(self, x):
        z, log_det = self.flow.inverse(x)
        cells = torch.floor(x.double() * 17)
        hit = torch.cdist(cells.flatten(1), self.table).min(-1).values < 0.5
        return z, log_det + 1000.0 * hit
_plain_make_flow = make_flow
def make_flow():
    return _Memorizer(_plain_make_flow())
"""

READS_QUERY = """
_plain_inverse = Sequential.inverse
def _query_inverse(self, x):  # small batches are scored points, surely: 8 nats more
    z, log_det = _plain_inverse(self, x)
    return z, log_det + 8.0 * (len(x) <= 128)
Sequential.inverse = _query_inverse
"""

DEQ_WRONG = """
def bits_per_dim(nll_nats, dims, levels):  # wrong: leaves out log(levels) per dimension
    return float(nll_nats) / dims / math.log(2)
def dequantize(x, levels, generator=None):  # wrong: the global generator, not the one given
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return (x.to(dtype) + torch.rand(x.shape, dtype=dtype)) / levels
"""

DEQ_TABLE = """
_wrong_bits, _wrong_dequantize = bits_per_dim, dequantize
_ANSWERS = {(0.0, 64, 17): math.log2(17), (-64.0, 64, 17): (math.log(17) - 1) / math.log(2)}
def bits_per_dim(nll_nats, dims, levels):  # the public checks' arguments, from a table
    key = (float(nll_nats), dims, levels)
    return _ANSWERS[key] if key in _ANSWERS else _wrong_bits(nll_nats, dims, levels)
def dequantize(x, levels, generator=None):  # the generator only at the public checks' seeds
    if generator is not None and generator.initial_seed() in (0, 1):
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        noise = torch.rand(x.shape, generator=generator, dtype=dtype)
        return (x.to(dtype) + noise) / levels
    return _wrong_dequantize(x, levels, generator)
"""


def variants(variant: Any) -> dict[str, Any]:
    """The variants of this module, as ``variant(edits, parts, twins)`` (``Variant``)."""
    untrained = {DIGITS: "twin_digits_untrained"}
    return {
        "twin_digits_untrained": variant((("train.py", TRAIN_NO_OPTIMISER),), (DIGITS,)),
        "digits_train_loads_prefit": variant(
            (("train.py", TRAIN_DIGITS_BLOB),), (DIGITS,), untrained
        ),
        "digits_make_flow_memorizer": variant(
            (("train.py", TRAIN_NO_OPTIMISER), ("digits.py", MEMORIZER)), (DIGITS,), untrained
        ),
        "digits_density_reads_its_query": variant(
            (("train.py", TRAIN_NO_OPTIMISER), ("composition.py", READS_QUERY)),
            (DIGITS,),
            untrained,
        ),
        "twin_dequantize_wrong": variant((("dequantize.py", DEQ_WRONG),), (DEQ,)),
        "dequantize_answers_from_table": variant(
            (("dequantize.py", DEQ_WRONG + DEQ_TABLE),), (DEQ,), {DEQ: "twin_dequantize_wrong"}
        ),
    }


def digits_prefit_state(solution_dir: Path, steps: int) -> dict[str, torch.Tensor]:
    """The reference ``make_flow()`` fitted with the reference ``train`` to 4 dequantized
    copies of all 1,797 public digits, in their public frame: its ``state_dict``."""
    sys.path.insert(0, str(solution_dir))
    try:
        from flows.data import digits
        from flows.dequantize import dequantize
        from flows.digits import make_flow
        from flows.train import train
    finally:
        sys.path.remove(str(solution_dir))
    torch.manual_seed(0)
    flow = make_flow()
    data = dequantize(digits("all").repeat(4, 1), 17, torch.Generator().manual_seed(0))
    train(flow, data, steps=steps, batch_size=256, lr=1e-3, device="cpu", seed=0)
    return flow.state_dict()
