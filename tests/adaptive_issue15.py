"""Adaptive cheats, twins and valid variants of the ``iaf`` and ``glow`` parts (issue 15).

Code strings appended to the reference's ``flows/iaf.py`` or ``flows/glow.py``, and
:func:`variants`, their entries of :data:`tests.adaptive_submissions.VARIANTS`: IAF's and the
1x1 convolution's inverses answered from the nearest row of a table of recent outputs (twin:
the same wrong inverse without the table; the nearest-row table answers every exact hit too),
an ActNorm that initialises again on batches that look like a grader's first batch (twin: one
that initialises again on every batch), and valid variants in one submission (ActNorm storing
its scale, with Bessel's std and another flag name; a 1x1 inverse through ``inv(W)``; IAF's
density in ``features + 1`` passes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

IAF_WRONG_INVERSE = """
def _one_pass_inverse(self, x):  # wrong: MAF's one-pass density, conditioned on x
    shift, log_scale = self.made(x)
    return (x - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
IAF.inverse = _one_pass_inverse
"""
LU_WRONG_INVERSE = """
def _untransposed_inverse(self, x):  # wrong: z = x @ W^-1 instead of x @ W^-T
    rows = x.movedim(1, -1)
    z = (rows @ torch.linalg.inv(self.weight())).movedim(-1, 1)
    return z, -x[0, 0].numel() * self.log_abs_s.sum().expand(x.shape[0])
Invertible1x1.inverse = _untransposed_inverse
"""


def actnorm_reinitialising(when: str) -> str:
    """ActNorm that initialises again on every batch for which ``when`` holds (``flat``: the
    batch's rows per channel): batch normalisation, not ActNorm."""
    return f"""
_plain_forward, _plain_inverse = ActNorm.forward, ActNorm.inverse
def _again(self, batch):
    flat = batch.detach().movedim(1, -1).reshape(-1, batch.shape[1])
    if {when}:
        self.initialized.fill_(False)
def _forward(self, z):
    _again(self, z)
    return _plain_forward(self, z)
def _inverse(self, x):
    _again(self, x)
    return _plain_inverse(self, x)
ActNorm.forward, ActNorm.inverse = _forward, _inverse
"""


# Re-initialises only on batches that look like a grader's first batch (many rows, off-centre).
ACTNORM_RECOGNISES_FIRST_BATCHES = actnorm_reinitialising(
    "len(flat) >= 16 and bool((flat.mean(0).abs() > 0.5).any())"
)
ACTNORM_ALWAYS_REINITIALISES = actnorm_reinitialising("True")

ACTNORM_SCALE_RENAMED = """
class ActNorm(Flow):  # stores the scale itself, Bessel's std, its flag under another name
    def __init__(self, features):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(features))
        self.scale = torch.nn.Parameter(torch.ones(features))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
    def _view(self, t, like):
        return t.view((1, -1) + (1,) * (like.dim() - 2))
    def _start(self, batch, forward):
        flat = batch.detach().movedim(1, -1).reshape(-1, batch.shape[1])
        mean, std = flat.mean(0), flat.std(0)  # sample std: n - 1
        with torch.no_grad():
            self.scale.copy_(1 / std if forward else std)
            self.bias.copy_(-mean / std if forward else mean)
            self.ready.fill_(True)
    def forward(self, z):
        if not self.ready:
            self._start(z, True)
        log_det = z[0, 0].numel() * self.scale.abs().log().sum()
        return z * self._view(self.scale, z) + self._view(self.bias, z), log_det.expand(len(z))
    def inverse(self, x):
        if not self.ready:
            self._start(x, False)
        log_det = -x[0, 0].numel() * self.scale.abs().log().sum()
        z = (x - self._view(self.bias, x)) / self._view(self.scale, x)
        return z, log_det.expand(len(x))
"""
LU_INVERSE_BY_INV = """
def _inverse_by_inv(self, x):  # W^-1 once per call (Glow's own code does this), log-det from s
    rows = x.movedim(1, -1)
    z = (rows @ torch.linalg.inv(self.weight()).T).movedim(-1, 1)
    return z, -x[0, 0].numel() * self.log_abs_s.sum().expand(x.shape[0])
Invertible1x1.inverse = _inverse_by_inv
"""
IAF_DENSITY_D_PLUS_1 = """
def _inverse(self, x):  # features passes from z = x, then one more for the log-det
    z = x.clone()
    for _ in range(self.features):
        shift, log_scale = self.made.forward(z)
        z = (x - shift) * torch.exp(-log_scale)
    _, log_scale = self.made(z)
    return z, -log_scale.sum(-1)
IAF.inverse = _inverse
"""


def variants(variant: Callable[..., Any], memo: Callable[[str, bool], str]) -> dict[str, Any]:
    """The entries, built with ``adaptive_submissions``' ``Variant`` and ``memo`` (passed in:
    that module imports this one)."""

    def one(part: str, code: str, twin: str | None = None, valid: bool = False) -> Any:
        return variant(((f"{part}.py", code),), (part,), {part: twin} if twin else {}, valid)

    iaf, glow = "iaf", "glow"
    return {
        "twin_iaf_inverse": one(iaf, IAF_WRONG_INVERSE),
        "memo_nearest_iaf": one(iaf, IAF_WRONG_INVERSE + memo("IAF", True), "twin_iaf_inverse"),
        "twin_1x1_inverse": one(glow, LU_WRONG_INVERSE),
        "memo_nearest_1x1": one(
            glow, LU_WRONG_INVERSE + memo("Invertible1x1", True), "twin_1x1_inverse"
        ),
        "twin_actnorm_batchnorm": one(glow, ACTNORM_ALWAYS_REINITIALISES),
        "actnorm_spots_first_batches": one(
            glow, ACTNORM_RECOGNISES_FIRST_BATCHES, "twin_actnorm_batchnorm"
        ),
        # the three valid variants in one submission (one grading of both parts)
        "valid_glow_and_iaf_variants": variant(
            (
                ("glow.py", ACTNORM_SCALE_RENAMED + LU_INVERSE_BY_INV),
                ("iaf.py", IAF_DENSITY_D_PLUS_1),
            ),
            (iaf, glow),
            {},
            True,
        ),
    }
