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

from autograder.config import Limits
from autograder.grading import remote
from autograder.grading.remote import Handle, StudentError, fetch, trace

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


def student_module(worker: remote.Session, part: str) -> Handle:
    """``flows.<part>`` in the worker, or a one-line failure of the calling test."""
    try:
        return worker.module(part)
    except StudentError as exc:
        pytest.fail(exc.message, pytrace=False)


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


# ---------------------------------------------------------------------------------------------
# Checking what came back: values from the worker are data, validated before use.


def expect_tensor(value: Any, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``value`` if it is a tensor (of ``shape``), else a failure in the lesson's terms."""
    assert isinstance(value, torch.Tensor), f"{what} should be a tensor, got {_kind(value)}"
    if shape is not None:
        assert tuple(value.shape) == tuple(shape), (
            f"{what} should have shape {tuple(shape)}, got {tuple(value.shape)}"
        )
    return value


def expect_pair(
    out: Any, what: str, batch: int, features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow's ``(output (batch, features), log|det J| (batch,))``, checked."""
    assert isinstance(out, tuple) and len(out) == 2, (
        f"{what} should return a pair (output, log|det J|), got {_kind(out)}"
    )
    y = expect_tensor(out[0], f"the output of {what}", (batch, features))
    log_det = out[1]
    assert isinstance(log_det, torch.Tensor) and tuple(log_det.shape) == (batch,), (
        f"{what} on a batch of {batch} should return one log|det J| per sample, shape "
        f"({batch},); got {_shape_or_kind(log_det)}"
    )
    return y, log_det


def _kind(value: Any) -> str:
    if isinstance(value, Handle):
        return f"an object ({value._label})"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return type(value).__name__


def _shape_or_kind(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else _kind(value)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def jacobians(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Per-sample Jacobians ``(batch, d_out, d_in)`` of ``fn`` at ``x`` by central differences.

    ``fn`` maps a batch ``(n, d_in)`` to ``(n, d_out)`` sample by sample; all ``2 d_in``
    perturbations of every sample go to the worker in one call. In float64 the error is
    about ``eps^2`` times the third derivative plus rounding, ~1e-9 for these layers.
    """
    batch, d = x.shape
    if x.dtype != torch.float64:
        eps = max(eps, 1e-2)  # float32 layers: rounding would swamp a smaller step
    steps = eps * torch.eye(d, dtype=torch.float64)
    centre = x.double()[:, None, :]
    points = torch.cat([(centre + steps).reshape(-1, d), (centre - steps).reshape(-1, d)])
    out = fn(points.to(x.dtype)).double()
    plus, minus = out[: batch * d].reshape(batch, d, -1), out[batch * d :].reshape(batch, d, -1)
    return ((plus - minus) / (2 * eps)).transpose(1, 2)


def log_abs_dets(jacobian: torch.Tensor) -> torch.Tensor:
    return torch.linalg.slogdet(jacobian).logabsdet


def expect_gradients(
    probes: Handle, fn: Handle, module: Handle, args: tuple, what: str, of: str, output=None
) -> None:
    """Training needs autograd's gradient through ``fn``: the worker's autograd gradient of
    ``mean(fn(*args)[output])`` (w.r.t. ``module``'s parameters and each float64 tensor in
    ``args``) must match finite differences of outputs measured here, along a random direction.

    ``what`` names the call (``AffineCoupling(mask=[1, 0]).forward``), ``of`` the output (``the
    output``, ``log|det J|``). A ``.detach()`` or a value taken out of the graph shows here.
    """
    eps, tol = 1e-6, 1e-6
    got = probes.gradient_of_mean(fn, module, *args, output=output)
    select = (lambda out: out[output]) if output is not None else (lambda out: out)

    def mean_of(out: Any) -> float:
        if output is not None:
            assert isinstance(out, tuple) and len(out) > output, f"{what} returned {_kind(out)}"
        return float(expect_tensor(select(out), f"{of} of {what}").double().mean())

    generator = torch.Generator().manual_seed(SEED + 17)
    checks: list[tuple[str, float, float]] = []  # (with respect to, autograd, measured)
    grad = expect_tensor(got["parameters"], "the gradient").double()
    if grad.numel():
        direction = torch.randn(grad.numel(), dtype=torch.float64, generator=generator)
        direction /= direction.norm()
        plus = mean_of(probes.moved_parameters_call(fn, module, direction, eps, *args))
        minus = mean_of(probes.moved_parameters_call(fn, module, direction, -eps, *args))
        checks.append(
            ("the flow's parameters", float(grad @ direction), (plus - minus) / (2 * eps))
        )
    for index, (arg, grad) in enumerate(zip(args, got["inputs"], strict=True)):
        if not isinstance(arg, torch.Tensor) or grad is None:
            continue
        grad = expect_tensor(grad, "the gradient", tuple(arg.shape)).double()
        direction = torch.randn(arg.shape, dtype=torch.float64, generator=generator)
        direction /= direction.norm()
        moved = [list(args), list(args)]
        moved[0][index], moved[1][index] = arg + eps * direction, arg - eps * direction
        plus, minus = (mean_of(fn(*m)) for m in moved)
        checks.append(("the input", float((grad * direction).sum()), (plus - minus) / (2 * eps)))
    for wrt, autograd, measured in checks:
        assert abs(autograd - measured) <= tol * (1 + abs(measured)), (
            f"{what}: training follows the gradient, so the gradient of the mean of {of} with "
            f"respect to {wrt} should match how it changes; along a random direction it changes "
            f"at rate {measured:.6g} (finite differences), but autograd's gradient gives "
            f"{autograd:.6g} (is a tensor detached, or computed outside autograd, on the way?)"
        )


# Calls that cost more than O(d) per sample: a determinant, an inverse, or an autograd Jacobian.
EXPENSIVE_CALLS = frozenset(
    {
        "det",
        "logdet",
        "slogdet",
        "linalg_det",
        "linalg_slogdet",
        "inverse",
        "linalg_inv",
        "linalg_inv_ex",
        "linalg_solve",
        "linalg_pinv",
        "pinverse",
        "grad",
        "jacobian",
        "vjp",
        "jvp",
        "linalg_eig",
        "linalg_eigvals",
        "linalg_lu_factor",
        "linalg_lu",
    }
)


class BijectionChecks:
    """Checks of one flow layer (a handle) in both directions, with messages in the lesson's terms.

    ``name`` describes the layer (e.g. ``AffineCoupling(mask=[1, 0, 1, 0])``) in every message.
    """

    directions = ("forward", "inverse")
    maps = {"forward": "f", "inverse": "f^{-1}"}

    def __init__(self, tol: float, jacobian_tol: float) -> None:
        self.tol = tol
        self.jacobian_tol = jacobian_tol

    def outputs(self, flow: Handle, direction: str, x: torch.Tensor, name: str):
        return expect_pair(getattr(flow, direction)(x), f"{name}.{direction}", *x.shape)

    def invertible(self, flow: Handle, x: torch.Tensor, name: str) -> None:
        for first, second in (self.directions, self.directions[::-1]):
            y, _ = self.outputs(flow, first, x, name)
            back, _ = self.outputs(flow, second, y.to(x.dtype), name)
            f, g = self.maps[first], self.maps[second]
            error = max_error(back, x)
            assert error < self.tol, (
                f"{name}: {g}({f}(v)) should give back v; the largest difference is "
                f"{error:.3g} (expected < {self.tol:.0e})"
            )

    def log_det_matches_jacobian(self, flow: Handle, x: torch.Tensor, name: str) -> None:
        """Each log|det J| against the Jacobian measured here by finite differences (float64)."""
        for direction in self.directions:
            _, log_abs_det = self.outputs(flow, direction, x, name)
            method = getattr(flow, direction)
            label = f"{name}.{direction}"
            J = jacobians(lambda v, method=method, label=label: self._first(method(v), label), x)
            expected = log_abs_dets(J)
            for i in range(x.shape[0]):
                got = float(log_abs_det[i])
                assert abs(got - float(expected[i])) < self.jacobian_tol, (
                    f"{name}.{direction}: the log|det J_{self.maps[direction]}| of sample {i} "
                    f"should equal log|det| of its Jacobian, {float(expected[i]):.6f} (measured "
                    f"by finite differences); got {got:.6f}"
                )

    @staticmethod
    def _first(out: Any, label: str) -> torch.Tensor:
        assert isinstance(out, tuple) and len(out) == 2, (
            f"{label} should return a pair (output, log|det J|), got {_kind(out)}"
        )
        return expect_tensor(out[0], f"the output of {label}")

    def log_dets_negate(self, flow: Handle, z: torch.Tensor, name: str) -> None:
        x, forward = self.outputs(flow, "forward", z, name)
        _, inverse = self.outputs(flow, "inverse", x.to(z.dtype), name)
        error = max_error(forward, -inverse)
        assert error < self.tol, (
            f"{name}: log|det J_f(z)| and log|det J_{{f^{{-1}}}}(f(z))| should be opposite "
            f"numbers; their sum is up to {float((forward + inverse).abs().max()):.3g} "
            f"(forward {float(forward[0]):.4f}, inverse {float(inverse[0]):.4f} for sample 0)"
        )

    def batch_independent(self, flow: Handle, x: torch.Tensor, name: str) -> None:
        """Sample 0's outputs do not change when the other samples of its batch do."""
        others = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(7))
        mixed = torch.cat([x[:1], others[1:]])
        for direction in self.directions:
            y, log_det = self.outputs(flow, direction, x, name)
            y2, log_det2 = self.outputs(flow, direction, mixed, name)
            y1, log_det1 = self.outputs(flow, direction, x[:1], name)
            leak = max(max_error(y[:1], y2[:1]), max_error(y[:1], y1))
            assert leak <= self.tol, (
                f"{name}.{direction}: each sample must be transformed on its own, but sample 0's "
                f"output changed by {leak:.3g} when the rest of its batch changed"
            )
            error = max(max_error(log_det[:1], log_det2[:1]), max_error(log_det[:1], log_det1))
            assert error <= self.tol, (
                f"{name}.{direction}: the log|det J| of a sample should not depend on the rest "
                f"of the batch; alone {float(log_det1[0]):.4f}, in a batch {float(log_det[0]):.4f}"
            )

    def cheap(self, flow: Handle, x: torch.Tensor, name: str, directions=directions) -> None:
        """No determinant, inverse or autograd Jacobian on a wide layer (as the worker saw it).

        The wall clock of the test (``course.yml``'s ``test_timeout_s``) bounds a slow layer
        too; this check names what made it slow.
        """
        for direction in directions:
            out, names = trace(getattr(flow, direction), x)
            expect_pair(out, f"{name}.{direction}", *x.shape)
            expensive = sorted(set(names) & EXPENSIVE_CALLS)
            assert not expensive, (
                f"{name}.{direction} with {x.shape[1]} features should get its log|det J| from "
                f"the triangular structure in O(d); it called {', '.join(expensive)}"
            )


@pytest.fixture
def check(tol: float, jacobian_tol: float) -> BijectionChecks:
    return BijectionChecks(tol, jacobian_tol)


__all__ = ["Handle", "fetch", "trace"]
