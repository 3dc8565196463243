"""Hidden suites of ``normalizing_flows``: options, the student's modules, shared helpers.

These tests run in the grader's *harness* process, which never imports student code: the
student's modules live in a sandboxed worker (:mod:`autograder.grading.worker`) and reach the
tests as handles (:class:`autograder.grading.remote.Handle`). Calling a handle runs the code in
the worker and returns fresh plain tensors, so every expected value and every verdict is computed
here, from data. There is no autograd across the boundary: derivatives of student maps are
float64 central differences of worker outputs (:func:`jacobians`).

Run against a submission (a folder holding ``flows/``)::

    pytest tests/hidden/normalizing_flows --submission=DIR [--sandbox=auto] [--dtype=float32]

(``--submission=DIR`` with ``=``: pytest would otherwise take DIR for a test path and load its
conftest.)

A test module ``test_<part>.py`` grades the student file ``flows/<part>.py``; a file that does
not import fails its own part's tests with one line, e.g. ``coupling.py does not import:
SyntaxError: invalid syntax (coupling.py, line 12)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from autograder.checks import (
    EXPENSIVE_CALLS,
    BijectionChecks,
    LayerCase,
    Modules,
    expect_finite,
    expect_gradients,
    expect_pair,
    expect_tensor,
    jacobians,
    kind,
    log_abs_dets,
    max_error,
    student_module,
)
from autograder.config import Limits
from autograder.grading import remote
from autograder.grading.remote import Handle, fetch, trace

PACKAGE = "flows"
PARTS = ("change_of_variables", "composition", "coupling", "maf", "train")
# The reference, found from here: tests/hidden/<assignment>/ -> solutions/<assignment>/.
DEFAULT_SUBMISSION = Path(__file__).resolve().parents[3] / "solutions" / Path(__file__).parent.name
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SEED = 0
HARNESS_PLUGIN = "autograder_harness"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hidden suite")
    group.addoption(
        "--submission",
        default=str(DEFAULT_SUBMISSION),
        help="folder holding the flows/ package to grade (default: the reference solution)",
    )
    group.addoption("--device", default="cpu", choices=("cpu", "cuda"), help="device of checks")
    group.addoption(
        "--dtype",
        default="float64",
        choices=tuple(DTYPES),
        help="dtype of the algebraic checks (float64 gives them their tight tolerances)",
    )
    group.addoption(
        "--sandbox",
        default="auto",
        choices=("auto", "bwrap", "user", "none"),
        help="how the student's code is isolated when this suite runs without the grader",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "weight(w): relative weight of a test inside its part")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where there is none")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this host has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# The worker and the student's modules.


@pytest.fixture(scope="session")
def worker(request: pytest.FixtureRequest) -> Iterator[remote.Session]:
    """The sandboxed worker serving the submission: the grader's, or one of our own."""
    plugin = request.config.pluginmanager.get_plugin(HARNESS_PLUGIN)
    if plugin is not None:
        yield plugin.session
        return
    from autograder.grading.sandbox import choose

    base = Path(tempfile.mkdtemp(prefix="hidden-suite-"))
    session = remote.Session(
        choose(request.config.getoption("--sandbox")),
        Path(request.config.getoption("--submission")),
        base,
        Limits(test_timeout_s=300),
        gpu=torch.cuda.is_available(),  # the worker sees the GPUs only when asked to
    )
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def change_of_variables(worker) -> Handle:
    return student_module(worker, "change_of_variables")


@pytest.fixture
def composition(worker) -> Handle:
    return student_module(worker, "composition")


@pytest.fixture
def coupling(worker) -> Handle:
    return student_module(worker, "coupling")


@pytest.fixture
def maf(worker) -> Handle:
    return student_module(worker, "maf")


@pytest.fixture
def train(worker) -> Handle:
    return student_module(worker, "train")


@pytest.fixture
def iaf(worker) -> Handle:
    return student_module(worker, "iaf")


@pytest.fixture
def glow(worker) -> Handle:
    return student_module(worker, "glow")


@pytest.fixture
def given(worker) -> Handle:
    """The given ``flows.base`` (``Flow``, ``Reverse``, ``standard_normal``), in the worker."""
    return worker.module("base")


@pytest.fixture
def probes(worker) -> Handle:
    """The course's probe flows (``autograder/grading/probes.py``), in the worker."""
    return worker.request("import", {"module": "probes"}, label="probes")


# ---------------------------------------------------------------------------------------------
# Options, seeding, parameter randomization, artifacts.


@pytest.fixture(autouse=True)
def _seeded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts from the same random state here and in the worker."""
    torch.manual_seed(SEED)
    if "worker" in request.fixturenames:
        request.getfixturevalue("worker").request("seed", {"seed": SEED}, label="seeding")
    yield


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda, but this host has no CUDA device")
    return torch.device(name)


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return DTYPES[request.config.getoption("--dtype")]


@pytest.fixture
def tol(dtype: torch.dtype) -> float:
    """Absolute tolerance of the algebraic checks (inverses, log-determinants)."""
    return 1e-8 if dtype == torch.float64 else 1e-3


@pytest.fixture
def jacobian_tol(dtype: torch.dtype) -> float:
    """Tolerance of log-dets against finite-difference Jacobians (their error is ~1e-9)."""
    return 1e-6 if dtype == torch.float64 else 1e-2


@pytest.fixture
def randomize() -> Callable[..., Handle]:
    """Re-draw every trainable parameter of a layer (in the worker) from N(0, 0.3^2).

    Fresh layers are often initialized to the identity, which hides a flipped sign or a
    swapped direction; random parameters make every term of the map matter. Frozen tensors
    (``requires_grad=False``, e.g. masks kept as parameters) are left alone.
    """

    def apply(module: Handle, seed: int = 1234) -> Handle:
        remote.randomize(module, seed)
        return module

    return apply


@pytest.fixture
def record_artifact(request: pytest.FixtureRequest) -> Callable[[str, dict[str, Any]], None]:
    """``record_artifact(name, data)``: hand data for feedback pictures to the grader, if any."""
    plugin = request.config.pluginmanager.get_plugin(HARNESS_PLUGIN)

    def record(name: str, data: dict[str, Any]) -> None:
        if plugin is not None:
            plugin.record_artifact(name, data)

    return record


@pytest.fixture
def leaderboard(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``leaderboard(name, value, order="asc")``: a figure for Gradescope's leaderboard ("asc":
    lower ranks first). ``value`` is a number computed here, never a handle; a value that is not
    finite is left out, and the grader keeps a test's figures only if the test passes
    (:mod:`autograder.grading.leaderboard`). Outside the grader: checked, then dropped."""
    from autograder.grading.leaderboard import recorder

    return recorder(request.config.pluginmanager.get_plugin(HARNESS_PLUGIN))


# ---------------------------------------------------------------------------------------------
# The part's evaluation worker and the checks (autograder/checks). The helpers below are
# re-exported for the suites that still import them from here; new code imports autograder.checks.


@pytest.fixture(scope="module")
def _own_evaluator(request: pytest.FixtureRequest) -> Iterator[remote.Session | None]:
    """Outside the grader: one evaluation worker per test module (a module is a part)."""
    if request.config.pluginmanager.get_plugin(HARNESS_PLUGIN) is not None:
        yield None
        return
    from autograder.grading.sandbox import choose

    base = Path(tempfile.mkdtemp(prefix="hidden-evaluator-"))
    session = remote.Session(
        choose(request.config.getoption("--sandbox")),
        Path(request.config.getoption("--submission")),
        base,
        Limits(test_timeout_s=300),
        slot=1,  # the user backend's per-slot uid: not the main worker's
        gpu=torch.cuda.is_available(),
    )
    session.launch()
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def evaluator(
    request: pytest.FixtureRequest, _own_evaluator: remote.Session | None
) -> remote.Session:
    """The part's evaluation worker: a second worker on the same submission, where layers are
    rebuilt (``remote.rebuild``) to answer the second direction of a round trip. In the grader
    it is the harness's (one per part, the running test's deadline, its flags reported)."""
    plugin = request.config.pluginmanager.get_plugin(HARNESS_PLUGIN)
    return plugin.evaluator() if plugin is not None else _own_evaluator


@pytest.fixture
def modules(worker: remote.Session) -> Modules:
    """The student's modules in the main worker: ``modules.coupling`` is ``flows.coupling``."""
    return Modules(worker)


@pytest.fixture
def check(tol: float, jacobian_tol: float, evaluator, probes) -> BijectionChecks:
    return BijectionChecks(tol, jacobian_tol, evaluator, probes)


_kind = kind
__all__ = [
    "EXPENSIVE_CALLS",
    "BijectionChecks",
    "Handle",
    "LayerCase",
    "Modules",
    "expect_finite",
    "expect_gradients",
    "expect_pair",
    "expect_tensor",
    "fetch",
    "jacobians",
    "log_abs_dets",
    "max_error",
    "trace",
]
