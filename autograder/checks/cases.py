"""Layer cases: each hidden test file lists its layers once and runs the same checks over all.

A :class:`LayerCase` says how to build a layer from the student's modules, how large it is and
how to draw inputs for it::

    CASES = [
        LayerCase("AffineCoupling(mask=[1, 0, 1])",
                  lambda m: m.coupling.AffineCoupling(torch.tensor([1., 0, 1]), 16, 2),
                  features=3),
        ...
    ]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_invertible(case, modules, check, dtype):
        flow = case.layer(modules, dtype)
        check.invertible(flow, case.inputs("invertible", dtype), case.name)

``modules`` (a :class:`Modules`) names the student's files in the worker: ``modules.coupling``
is ``flows.coupling`` there, or a one-line failure of the test when it does not import.
``case.layer`` builds the layer, converts it to ``dtype`` (a recorded ``.to()``, replayed by a
rebuild) and re-draws its trainable parameters from N(0, ``randomize``^2) (a fresh layer is
often the identity, which hides a wrong sign); ``randomize=None`` keeps its own.
``case.inputs(key, dtype)`` draws ``n`` points from a generator seeded by the case's name and
``key``: each check gets its own points, so no worker sees one check's points in another.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from autograder.grading import remote
from autograder.grading.remote import Handle, StudentError


class Modules:
    """The student's modules in one worker: ``modules.<part>`` is ``flows.<part>`` there."""

    def __init__(self, session: remote.Session) -> None:
        self._session = session

    def __getattr__(self, part: str) -> Handle:
        if part.startswith("_"):
            raise AttributeError(part)
        return student_module(self._session, part)


def student_module(session: remote.Session, part: str) -> Handle:
    """``flows.<part>`` in the worker, or a one-line failure of the calling test."""
    try:
        return session.module(part)
    except StudentError as exc:
        pytest.fail(exc.message, pytrace=False)


@dataclass(frozen=True)
class LayerCase:
    """One layer to check: ``name`` (as messages show it), ``build(modules) -> handle``."""

    name: str
    build: Callable[[Modules], Handle]
    features: int
    batch: int = 4
    scale: float = 1.0  # inputs ~ scale * N(0, I), unless ``sampler`` is given
    randomize: float | None = 0.3
    allowed: frozenset[str] = frozenset()  # expensive calls the layer may make (see cheap)
    sampler: Callable[[int, torch.Generator], torch.Tensor] | None = None  # (n, gen) -> (n, d)
    meta: Any = None  # what the test file needs to know of the layer (a coupling's mask, say)

    def __str__(self) -> str:
        return self.name

    def layer(self, modules: Modules, dtype: torch.dtype = torch.float64, seed: int = 1234):
        """The layer, in the worker: built, in ``dtype``, its parameters re-drawn."""
        flow = self.build(modules)
        flow.to(dtype=dtype)
        if self.randomize is not None:
            remote.randomize(flow, seed, self.randomize)
        return flow

    def inputs(self, key: str, dtype: torch.dtype = torch.float64, n: int | None = None):
        """``n`` (default ``batch``) points of this case for the check ``key``."""
        n = self.batch if n is None else n
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.name}/{key}".encode()))
        if self.sampler is not None:
            points = self.sampler(n, generator)
        else:
            points = self.scale * torch.randn(n, self.features, generator=generator)
        return points.to(dtype)
