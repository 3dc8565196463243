"""The check framework of the hidden suites (:mod:`autograder.checks`).

The value helpers are checked on plain tensors; the bijection checks on layers in two real
sandboxed workers (a main one and an evaluation one): a correct coupling layer passes every
check, and a layer whose inverse is right only behind a table of its own recent outputs fails
``invertible`` (its twin has no table), as does one whose batch answers depend on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from autograder.checks import (
    BijectionChecks,
    LayerCase,
    Modules,
    expect_pair,
    fresh_points,
    jacobians,
    max_error,
)
from autograder.config import Limits
from autograder.grading.remote import Session
from tests.conftest import sandboxed_pair

LIMITS = Limits(test_timeout_s=60, submission_timeout_s=120, memory_mb=3072, max_processes=32)

CHEATS = """
import torch
from flows.base import Flow

SEEN = {}


class Memo(Flow):
    '''x = 2z + 1; the inverse is the identity unless x is one of its own recent outputs.'''

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, z):
        x = self.a * z + 1
        for row_x, row_z in zip(x, z):
            SEEN[row_x.detach().numpy().tobytes()] = row_z.detach().clone()
        return x, (self.a.log() * z.shape[1]).expand(z.shape[0])

    def inverse(self, x):
        rows = [SEEN.get(r.detach().numpy().tobytes(), r) for r in x]
        return torch.stack(rows), (-self.a.log() * x.shape[1]).expand(x.shape[0])


class BatchMean(Flow):
    '''x = z - mean of the batch (plus the identity's log-det): not sample by sample.'''

    def forward(self, z):
        return z - z.mean(0), z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x + x.mean(0), x.new_zeros(x.shape[0])
"""


def test_expect_pair_fails_nan_and_inf_first() -> None:
    good = (torch.zeros(3, 2), torch.zeros(3))
    assert expect_pair(good, "f", 3, 2)[0].shape == (3, 2)
    for bad in (float("nan"), math.inf):
        out = torch.zeros(3, 2)
        out[1, 0] = bad
        with pytest.raises(AssertionError, match="finite"):
            expect_pair((out, torch.zeros(3)), "f", 3, 2)
        with pytest.raises(AssertionError, match="finite"):
            expect_pair((torch.zeros(3, 2), torch.tensor([0.0, bad, 0.0])), "f", 3, 2)


def test_max_error_of_nan_is_neither_equal_nor_changed() -> None:
    error = max_error(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    assert not error < 1e-8 and not error > 1e-6
    assert max_error(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == 2.0


def test_fresh_points_are_new_blends_inside_the_rows_range() -> None:
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fresh = fresh_points(x, "key")
    assert torch.equal(fresh, fresh_points(x, "key"))
    assert not torch.equal(fresh, fresh_points(x, "other"))
    assert bool((fresh >= x.min(0).values - 1e-12).all() and (fresh <= x.max(0).values).all())
    assert float(torch.cdist(fresh, x).min()) > 1e-6  # none of them is one of the given rows


def test_jacobians_of_a_linear_map_are_its_matrix() -> None:
    A = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    J = jacobians(lambda v: v @ A.T, x)
    assert J.shape == (4, 2, 3)
    assert max_error(J, A.expand(4, -1, -1)) < 1e-8


def test_layer_case_inputs_differ_per_check_and_repeat_per_key() -> None:
    case = LayerCase("L", lambda m: None, features=3, batch=5, scale=2.0)
    a, b = case.inputs("one"), case.inputs("two")
    assert a.shape == (5, 3) and a.dtype == torch.float64
    assert torch.equal(a, case.inputs("one")) and not torch.equal(a, b)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Session]]:
    yield from sandboxed_pair(tmp_path_factory, {"cheats.py": CHEATS}, LIMITS, slot=70)


def test_a_correct_coupling_layer_passes_every_check(workers) -> None:
    main, evaluator = workers
    check = BijectionChecks(
        1e-8, 1e-6, evaluator, main.request("import", {"module": "probes"}, label="probes")
    )
    case = LayerCase(
        "AffineCoupling(mask=[0, 1, 1])",
        lambda m: m.coupling.AffineCoupling(torch.tensor([0.0, 1, 1]), 8, 2),
        features=3,
    )
    flow = case.layer(Modules(main))
    check.invertible(flow, case.inputs("a"), case.name)
    check.log_det_matches_jacobian(flow, case.inputs("b"), case.name)
    check.log_dets_negate(flow, case.inputs("c"), case.name)
    check.batch_independent(flow, case.inputs("d"), case.name)
    check.cheap(flow, case.inputs("e"), case.name)
    check.gradients(flow, case.inputs("f"), case.name)


def test_an_inverse_behind_a_table_of_outputs_is_not_invertible(workers) -> None:
    main, evaluator = workers
    check = BijectionChecks(1e-8, 1e-6, evaluator)
    memo = main.module("cheats").Memo()
    z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    back, _ = memo.inverse(memo.forward(z)[0])  # in its own worker, the table answers
    assert torch.equal(back, z)
    with pytest.raises(AssertionError, match="give back v"):
        check.invertible(memo, z, "Memo")


def test_a_batch_dependent_layer_is_caught(workers) -> None:
    main, evaluator = workers
    check = BijectionChecks(1e-8, 1e-6, evaluator)
    layer = main.module("cheats").BatchMean()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(AssertionError, match="on its own"):
        check.batch_independent(layer, x, "BatchMean")
