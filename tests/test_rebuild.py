"""Recipes and rebuilds (:mod:`autograder.grading.recipes`) through real sandboxed workers.

Two sessions serve the same submission: the reference's ``flows/`` plus a module of layers that
make rebuilding hard. A rebuilt layer must compute what the original computes (constructor
replayed under the same seeds, ``state_dict`` loaded), also when it draws masks at random in
``__init__`` without registering them, and must forget what the original remembered (a table of
outputs kept in a module global).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from autograder.config import Limits
from autograder.grading.remote import Session, fetch, randomize, rebuild
from tests.conftest import sandboxed_pair

LIMITS = Limits(test_timeout_s=60, submission_timeout_s=120, memory_mb=3072, max_processes=32)

TRICKY = """
import random
import torch
from flows.base import Flow

SEEN = {}  # what Memo's forward returned: its inverse answers from this table


class RandomMask(Flow):
    '''x = z * exp(s * m) with a mask m drawn at random in __init__ and NOT registered.'''

    def __init__(self, features):
        super().__init__()
        self.m = (torch.rand(features) > 0.5).double() * random.random()
        self.s = torch.nn.Parameter(torch.randn(features, dtype=torch.float64))

    def forward(self, z):
        return z * (self.s * self.m).exp(), (self.s * self.m).sum().expand(z.shape[0])


class Memo(Flow):
    '''A wrong inverse behind a table of recent outputs.'''

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, z):
        x = self.a * z
        SEEN[x.detach().numpy().tobytes()] = z.detach().clone()
        return x, z.new_zeros(z.shape[0])

    def inverse(self, x):
        z = SEEN.get(x.detach().numpy().tobytes())
        return (z if z is not None else x), x.new_zeros(x.shape[0])
"""


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Session]]:
    yield from sandboxed_pair(tmp_path_factory, {"tricky.py": TRICKY}, LIMITS, slot=60)


def points(n: int = 6, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_a_rebuilt_coupling_stack_computes_what_the_original_computes(sessions) -> None:
    original, fresh = sessions
    coupling = original.module("coupling")
    composition = original.module("composition")
    masks = [torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 0, 1])]
    layers = [coupling.AffineCoupling(m, hidden_features=8).double() for m in masks]
    stack = composition.Sequential(layers[0], coupling.AdditiveCoupling(masks[1]).double())
    randomize(stack, seed=3)
    twin = rebuild(stack, fresh)
    assert twin._session is fresh
    x = points()
    for direction in ("forward", "inverse"):
        want, got = getattr(stack, direction)(x), getattr(twin, direction)(x)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), direction
    # A path below a handle comes back too (the first layer of the stack, by attribute path).
    inner = rebuild(stack.flows[0], fresh)
    assert torch.equal(stack.flows[0].forward(x)[0], inner.forward(x)[0])


def test_a_mask_drawn_at_random_in_init_comes_back_identical(sessions) -> None:
    original, fresh = sessions
    tricky = original.module("tricky")
    layer = tricky.RandomMask(6)
    twin = rebuild(layer, fresh)
    x = points(d=6)
    assert torch.equal(fetch(layer.m), fetch(twin.m))
    assert torch.equal(layer.forward(x)[0], twin.forward(x)[0])
    # Different calls draw different seeds: two layers built in a row differ.
    other = tricky.RandomMask(6)
    assert not torch.equal(fetch(layer.m), fetch(other.m)) or fetch(layer.m).sum() == 0


def test_a_table_in_a_module_global_does_not_come_back(sessions) -> None:
    original, fresh = sessions
    layer = original.module("tricky").Memo()
    z = points()
    x, _ = layer.forward(z)
    back, _ = layer.inverse(x)
    assert torch.equal(back, z)  # the original answers from its table
    twin_back, _ = rebuild(layer, fresh).inverse(x)
    assert torch.equal(twin_back, x)  # the twin has no table: the wrong inverse shows
    assert not torch.allclose(twin_back, z)


def test_a_handle_of_a_restarted_worker_is_refused(sessions) -> None:
    original, fresh = sessions
    layer = original.module("tricky").RandomMask(3)
    original.stop()
    with pytest.raises(Exception, match="restarted"):
        rebuild(layer, fresh)


def test_rebuild_into_the_same_kind_of_worker_in_float32(sessions) -> None:
    """A ``.float()`` after a ``.double()`` is replayed in order: the twin ends in float32."""
    original, fresh = sessions
    layer = original.module("coupling").AffineCoupling(torch.tensor([0.0, 1.0]), hidden_features=4)
    layer.double()
    layer.float()
    twin = rebuild(layer, fresh)
    x = points(d=2).float()
    out = twin.forward(x)[0]
    assert out.dtype == torch.float32
    assert torch.equal(out, layer.forward(x)[0])
