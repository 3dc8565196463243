"""Hidden suites of ``normalizing_flows``: options, the student's modules, shared helpers.

Run against a submission (a folder holding ``flows/``)::

    pytest tests/hidden/normalizing_flows --submission DIR [--device cuda] [--dtype float32]

The student's modules are reached only through the per-part fixtures below (``coupling``,
``maf``, ...): a file that does not import fails its own part's tests with one line, e.g.
``coupling.py does not import: SyntaxError: invalid syntax (line 12)``, and nothing else.
A test module ``test_<part>.py`` grades the student file ``flows/<part>.py``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

PACKAGE = "flows"
PARTS = ("change_of_variables", "composition", "coupling", "maf", "train")
# The reference, found from here: tests/hidden/<assignment>/ -> solutions/<assignment>/.
DEFAULT_SUBMISSION = Path(__file__).resolve().parents[3] / "solutions" / Path(__file__).parent.name
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SEED = 0


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "weight(w): relative weight of a test inside its part")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where there is none")
    # The suite's networks are tiny: one thread is fastest, and several threads spinning on a
    # busy grading host cost many times over. A grader that sets OMP_NUM_THREADS decides.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    submission = str(Path(config.getoption("--submission")).resolve())
    if submission not in sys.path[:1]:
        sys.path.insert(0, submission)
    # A `flows` imported from elsewhere (another submission in a reused process) must not win.
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this host has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# The student's modules, one fixture per part, imported lazily.


def _import_failure(exc: BaseException) -> str:
    """One line saying why a module did not import, without the grader's own frames."""
    if isinstance(exc, SyntaxError):
        where = f"{Path(exc.filename).name}, " if exc.filename else ""
        return f"{type(exc).__name__}: {exc.msg} ({where}line {exc.lineno})"
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised while importing"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if PACKAGE in Path(f.filename).parts
    ]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}"


_imported: dict[str, ModuleType | str] = {}


def student_module(part: str) -> ModuleType:
    """``flows.<part>`` from the submission, or a one-line failure of the calling test."""
    if part not in _imported:
        try:
            _imported[part] = importlib.import_module(f"{PACKAGE}.{part}")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit included: a student file must not end the run
            _imported[part] = f"{part}.py does not import: {_import_failure(exc)}"
    module = _imported[part]
    if isinstance(module, str):
        pytest.fail(module, pytrace=False)
    return module


@pytest.fixture
def change_of_variables() -> ModuleType:
    return student_module("change_of_variables")


@pytest.fixture
def composition() -> ModuleType:
    return student_module("composition")


@pytest.fixture
def coupling() -> ModuleType:
    return student_module("coupling")


@pytest.fixture
def maf() -> ModuleType:
    return student_module("maf")


@pytest.fixture
def train() -> ModuleType:
    return student_module("train")


# ---------------------------------------------------------------------------------------------
# Options, seeding, parameter randomization, artifacts.


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(SEED)
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
def randomize() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Re-draw every trainable parameter from N(0, 0.3^2) under a fixed seed.

    Fresh layers are often initialized to the identity, which hides a flipped sign or a
    swapped direction; random parameters make every term of the map matter. Frozen tensors
    (``requires_grad=False``, e.g. masks kept as parameters) are left alone.
    """

    def apply(module: torch.nn.Module, seed: int = 1234) -> torch.nn.Module:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in module.parameters():
                if parameter.requires_grad:
                    draw = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                    parameter.copy_(0.3 * draw)
        return module

    return apply


@pytest.fixture
def record_artifact(request: pytest.FixtureRequest) -> Callable[[str, dict[str, Any]], None]:
    """``record_artifact(name, data)``: hand data for feedback pictures to the grader, if any."""
    plugin = request.config.pluginmanager.get_plugin("autograder_runner")

    def record(name: str, data: dict[str, Any]) -> None:
        if plugin is not None:
            plugin.record_artifact(name, data)

    return record


# ---------------------------------------------------------------------------------------------
# Algebraic checks shared by the coupling and MAF suites: one flow layer against autograd.

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


class CallSpy(torch.overrides.TorchFunctionMode):
    """Records the name of every torch function called inside its ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))

    def expensive(self) -> list[str]:
        return sorted(set(self.names) & EXPENSIVE_CALLS)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


class BijectionChecks:
    """Checks of one flow layer in both directions, with messages in the lesson's terms.

    ``name`` describes the layer (e.g. ``AffineCoupling(mask=[1, 0, 1, 0])``) in every message.
    """

    directions = ("forward", "inverse")
    maps = {"forward": "f", "inverse": "f^{-1}"}

    def __init__(self, tol: float) -> None:
        self.tol = tol

    def outputs(self, flow: torch.nn.Module, direction: str, x: torch.Tensor, name: str):
        out = getattr(flow, direction)(x)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"{name}.{direction} should return a pair (output, log|det J|), got "
            f"{type(out).__name__}"
        )
        y, log_abs_det = out
        assert tuple(y.shape) == tuple(x.shape), (
            f"{name}.{direction} should keep the shape {tuple(x.shape)}, got {tuple(y.shape)}"
        )
        assert tuple(log_abs_det.shape) == (x.shape[0],), (
            f"{name}.{direction} on a batch of {x.shape[0]} should return one log|det J| per "
            f"sample, shape ({x.shape[0]},); got shape {tuple(log_abs_det.shape)}"
        )
        return y, log_abs_det

    def invertible(self, flow, x: torch.Tensor, name: str) -> None:
        for first, second in (self.directions, self.directions[::-1]):
            y, _ = self.outputs(flow, first, x, name)
            back, _ = self.outputs(flow, second, y, name)
            f, g = self.maps[first], self.maps[second]
            error = max_error(back, x)
            assert error < self.tol, (
                f"{name}: {g}({f}(v)) should give back v; the largest difference is "
                f"{error:.3g} (expected < {self.tol:.0e})"
            )

    def log_det_matches_jacobian(self, flow, x: torch.Tensor, name: str) -> None:
        for direction in self.directions:
            _, log_abs_det = self.outputs(flow, direction, x, name)
            for i in range(x.shape[0]):
                J = torch.autograd.functional.jacobian(
                    lambda v, direction=direction: getattr(flow, direction)(v[None])[0][0], x[i]
                )
                expected = torch.linalg.slogdet(J).logabsdet
                got = log_abs_det[i].detach()
                assert abs(float(got - expected)) < self.tol, (
                    f"{name}.{direction}: the log|det J_{self.maps[direction]}| of sample {i} "
                    f"should equal log|det| of its Jacobian computed by autograd, "
                    f"{float(expected):.6f}; got {float(got):.6f}"
                )

    def log_dets_negate(self, flow, z: torch.Tensor, name: str) -> None:
        x, forward = self.outputs(flow, "forward", z, name)
        _, inverse = self.outputs(flow, "inverse", x, name)
        error = max_error(forward, -inverse)
        assert error < self.tol, (
            f"{name}: log|det J_f(z)| and log|det J_{{f^{{-1}}}}(f(z))| should be opposite "
            f"numbers; their sum is up to {float((forward + inverse).abs().max()):.3g} "
            f"(forward {float(forward[0]):.4f}, inverse {float(inverse[0]):.4f} for sample 0)"
        )

    def batch_independent(self, flow, x: torch.Tensor, name: str) -> None:
        batch = x.shape[0]
        for direction in self.directions:
            J = torch.autograd.functional.jacobian(
                lambda v, direction=direction: getattr(flow, direction)(v)[0], x
            )
            cross = J.clone()
            for i in range(batch):
                cross[i, :, i, :] = 0  # keep only the derivatives across samples
            leak = float(cross.abs().max())
            assert leak <= self.tol, (
                f"{name}.{direction}: each sample must be transformed on its own, but output "
                f"sample i depends on input sample j != i (largest derivative {leak:.3g})"
            )
            _, together = self.outputs(flow, direction, x, name)
            alone = torch.stack(
                [self.outputs(flow, direction, x[i : i + 1], name)[1][0] for i in range(batch)]
            )
            error = max_error(together, alone)
            assert error < self.tol, (
                f"{name}.{direction}: the log|det J| of a sample should not depend on the rest "
                f"of the batch; alone {float(alone[0]):.4f}, in a batch {float(together[0]):.4f}"
            )

    def cheap(
        self, flow, x: torch.Tensor, name: str, directions=directions, limit_s: float = 3.0
    ) -> None:
        for direction in directions:
            spy = CallSpy()
            start = time.perf_counter()
            with spy:
                self.outputs(flow, direction, x, name)
            elapsed = time.perf_counter() - start
            assert not spy.expensive(), (
                f"{name}.{direction} with {x.shape[1]} features should get its log|det J| from "
                f"the triangular structure in O(d); it called {', '.join(spy.expensive())}"
            )
            assert elapsed < limit_s, (
                f"{name}.{direction} with {x.shape[1]} features should take milliseconds "
                f"(O(d) log-determinant); it took {elapsed:.1f} s"
            )


@pytest.fixture
def check(tol: float) -> BijectionChecks:
    return BijectionChecks(tol)
