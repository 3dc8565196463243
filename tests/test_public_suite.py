"""The public self-checks, run as a student runs them: a plain ``pytest`` inside the folder.

On the reference solution every check passes; on the generated stubs every check fails with the
one line "not implemented yet: <part>.<name>" and no traceback, and a per-part summary follows.
On a copy of the reference with one common mistake, the checks of that part fail, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from autograder.build import build_assignment
from autograder.config import PACKAGE, Assignment
from autograder.examples import ExampleSpec, find_spec

NOT_IMPLEMENTED = re.compile(r"^not implemented yet: (\w+)\.[\w.]+$")
SECTION = re.compile(r"^=+ (.+?) =+$")
TEST_HEADER = re.compile(r"^_+ (.+?) _+$")


def run_public_tests(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest [args]`` in ``folder``, leaving no bytecode behind in the repository."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def sections(output: str) -> dict[str, list[str]]:
    """pytest's ``===== title =====`` sections of a run's output, by title."""
    found: dict[str, list[str]] = {}
    current: list[str] = found.setdefault("", [])
    for line in output.splitlines():
        match = SECTION.match(line)
        current = found.setdefault(match.group(1), []) if match else current
        if not match:
            current.append(line)
    return found


def summary_table(output: str) -> dict[str, tuple[str, str]]:
    """``part -> (checks, points)`` from the conftest's self-check summary."""
    rows = [line.split() for line in sections(output)["self-check summary"] if line.strip()]
    return {row[0]: (row[1], row[2]) for row in rows if row[0] != "part"}


def count(output: str, outcome: str) -> int:
    match = re.search(rf"(\d+) {outcome}", output.splitlines()[-1])
    return int(match.group(1)) if match else 0


@pytest.mark.slow
def test_every_public_check_passes_on_the_reference(assignment: Assignment) -> None:
    result = run_public_tests(assignment.solution_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    passed = count(result.stdout, "passed")
    assert passed > 0 and count(result.stdout, "failed") == 0
    table = summary_table(result.stdout)
    # The reference folder holds every part it offers; those course.yml leaves out have no points.
    assert set(table) == set(assignment.parts) | set(assignment.unselected_parts)
    for part, (checks, points) in table.items():
        done, total = checks.split("/")
        expected = str(assignment.parts[part]) if part in assignment.parts else "-"
        assert done == total and points in (expected, expected.removesuffix(".0")), (part, points)


def test_every_public_check_fails_in_one_line_on_the_stubs(assignment: Assignment) -> None:
    assert_stubs_fail_in_one_line(assignment)


@pytest.mark.slow  # builds a release of every part, then runs its checks
def test_every_part_s_checks_fail_in_one_line_on_its_stubs(course_copy: Path) -> None:
    from test_build import every_part

    every = every_part(course_copy)
    build_assignment(every, check=False)
    assert_stubs_fail_in_one_line(every)


def assert_stubs_fail_in_one_line(assignment: Assignment) -> None:
    """Run the release's public checks: every one fails with one "not implemented yet" line,
    and the summary has each of the course's parts at 0 checks passed, with its points."""
    result = run_public_tests(assignment.release_dir)
    output = result.stdout
    assert result.returncode == 1, output[-3000:] + result.stderr
    # A check whose fixture calls unwritten code fails at setup: pytest counts it as an error.
    failed = count(output, "failed") + count(output, "error")
    assert failed > 0 and count(output, "passed") == 0
    assert "Traceback" not in output and "raise NotImplementedError" not in output

    # Each failure's report is exactly one "not implemented yet" line, nothing more.
    found = sections(output)
    reports: dict[str, list[str]] = {}
    body: list[str] = []
    for line in found.get("ERRORS", []) + found.get("FAILURES", []):
        header = TEST_HEADER.match(line)
        if header:
            body = reports.setdefault(header.group(1), [])
        elif line.strip():
            body.append(line)
    assert len(reports) == failed
    for test, body in reports.items():
        assert len(body) == 1 and NOT_IMPLEMENTED.match(body[0]), (test, body[:5])

    table = summary_table(output)
    assert set(table) == set(assignment.parts)
    for part, (checks, points) in table.items():
        assert checks.startswith("0/") and float(points) == assignment.parts[part]
    assert sum(int(checks.split("/")[1]) for checks, _ in table.values()) == failed


# --- the mistakes the public checks must catch ------------------------------------------------

# A RealNVP layer whose log-det comes from the full autograd Jacobian, one sample at a time: right
# on 4 features, hopeless on 2048.
FULL_JACOBIAN_COUPLING = ExampleSpec(
    name="affine_coupling_full_jacobian",
    file="coupling",
    part="coupling",
    old="return z * torch.exp(log_scale) + shift, log_scale.sum(-1)",
    new="""x = z * torch.exp(log_scale) + shift

        def one(v):
            t, s = self._shift_and_log_scale(self.mask * v)
            return v * torch.exp(s) + t

        jacobians = [torch.autograd.functional.jacobian(one, row) for row in z]
        return x, torch.stack([torch.linalg.slogdet(j).logabsdet for j in jacobians])""",
)
# A MAF density pass whose log-det is the slogdet of torch.func's batched Jacobian.
FULL_JACOBIAN_MAF = ExampleSpec(
    name="maf_inverse_full_jacobian",
    file="maf",
    part="maf",
    old="return (x - shift) * torch.exp(-log_scale), -log_scale.sum(-1)",
    new="""def one(v):
            t, s = self.made(v[None])
            return ((v[None] - t) * torch.exp(-s))[0]

        jacobians = torch.func.vmap(torch.func.jacrev(one))(x)
        return (x - shift) * torch.exp(-log_scale), torch.linalg.slogdet(jacobians).logabsdet""",
)
# Degrees 0..d-1 whatever the order: with positive weights every forbidden path shows.
MADE_IGNORES_ORDER = "made_ignores_order"
TRAIN_IGNORES_SEED = "train_ignores_seed"  # minibatches from torch's global random state
# A generator seeded with a constant instead of ``seed``: reproducible, but every seed is alike.
TRAIN_FIXED_SEED = ExampleSpec(
    name="train_fixed_seed",
    file="train",
    part="train",
    old="generator = torch.Generator(device=device).manual_seed(seed)",
    new="generator = torch.Generator(device=device).manual_seed(0)",
)

# A callback called before the step is taken, counting from 1: off by one, and the loss it gets is
# the previous step's.
TRAIN_CALLBACK_OFF_BY_ONE = ExampleSpec(
    name="train_callback_off_by_one",
    file="train",
    part="train",
    old="callback(step, loss.item())",
    new="callback(step + 1, float(losses[step - 1]))",
)

# The optional parts' classic mistakes.
# IAF sampling by MAF's loop: conditioned on x, one variable per pass (d passes, wrong map).
IAF_SAMPLES_LIKE_MAF = ExampleSpec(
    name="iaf_forward_like_maf",
    file="iaf",
    part="iaf",
    old="""        shift, log_scale = self.made(z)
        return z * torch.exp(log_scale) + shift, log_scale.sum(-1)""",
    new="""        x = torch.zeros_like(z)
        for _ in range(self.features):
            shift, log_scale = self.made(x)
            x = z * torch.exp(log_scale) + shift
        return x, log_scale.sum(-1)""",
)
# ActNorm that never records its initialisation: every batch is standardized anew.
ACTNORM_INITIALISES_EVERY_BATCH = ExampleSpec(
    name="actnorm_initialises_every_batch",
    file="glow",
    part="glow",
    old="self.initialized.fill_(True)",
    new="pass",
)
# The 1x1 convolution's log-det as the slogdet of the assembled matrix: O(d^3).
INVERTIBLE_1X1_SLOGDET = ExampleSpec(
    name="invertible_1x1_slogdet",
    file="glow",
    part="glow",
    old="log_abs_det = _pixels(z) * self.log_abs_s.sum()",
    new="log_abs_det = _pixels(z) * torch.linalg.slogdet(self.weight()).logabsdet",
)
# The logit's log-det without the (1 - 2 alpha) of the rescaling.
LOGIT_WITHOUT_RESCALING = ExampleSpec(
    name="logit_log_det_without_alpha",
    file="dequantize",
    part="dequantize",
    old="(math.log(1 - 2 * self.alpha) - log_p - log_1mp)",
    new="(-log_p - log_1mp)",
)
# Bits per dimension of the continuous density: the dequantization's log K per pixel left out.
BITS_WITHOUT_LEVELS = ExampleSpec(
    name="bits_per_dim_without_levels",
    file="dequantize",
    part="dequantize",
    old="(float(nll_nats) / dims + math.log(levels)) / math.log(2)",
    new="float(nll_nats) / dims / math.log(2)",
)


@dataclass(frozen=True)
class Caught:
    """A mistake, the public checks that must fail on it, and what their report must say."""

    mistake: ExampleSpec | str  # a spec, or the name of one in tests/examples
    failing: frozenset[str]  # test ids in its part's file, as pytest reports them
    says: str  # a phrase of the failure message, in the lesson's terms


CAUGHT = [
    Caught(
        FULL_JACOBIAN_COUPLING,
        frozenset({"test_wide_layer_needs_no_determinant[AffineCoupling]"}),
        "AffineCoupling(2048).forward with 2048 features called torch's grad",
    ),
    Caught(
        FULL_JACOBIAN_MAF,
        frozenset({"test_maf_density_needs_no_determinant"}),
        "MAF(2048).inverse with 2048 features called torch's grad",
    ),
    Caught(
        MADE_IGNORES_ORDER,
        frozenset({"test_made_is_autoregressive_in_any_order"}),
        "which does not come before it in the order",
    ),
    Caught(
        TRAIN_IGNORES_SEED,
        frozenset({"test_train_is_reproducible", "test_train_seed_chooses_the_minibatches"}),
        "draw the same minibatches",
    ),
    Caught(
        TRAIN_FIXED_SEED,
        frozenset({"test_train_seed_chooses_the_minibatches"}),
        "`seed` does not choose the minibatches",
    ),
    Caught(
        TRAIN_CALLBACK_OFF_BY_ONE,
        frozenset({"test_train_calls_callback_after_every_step"}),
        "should call f(step, loss) once after each step, with step = 0, 1, ..., 6",
    ),
    Caught(
        IAF_SAMPLES_LIKE_MAF,
        frozenset(
            {
                "test_iaf_samples_in_one_made_pass",
                "test_iaf_density_pass_inverts_sampling",
                "test_iaf_mirrors_maf_on_the_same_made",
            }
        ),
        "IAF(5).forward should call its MADE once",
    ),
    Caught(
        ACTNORM_INITIALISES_EVERY_BATCH,
        frozenset(
            {
                "test_actnorm_initialises_once_and_keeps_it_in_its_state_dict",
                "test_actnorm_log_det_on_images",
            }
        ),
        "so it was initialised twice",
    ),
    Caught(
        INVERTIBLE_1X1_SLOGDET,
        frozenset({"test_glow_layers_need_no_determinant[forward]"}),
        "Invertible1x1(512).forward with 512 features called torch's linalg_slogdet",
    ),
    Caught(
        LOGIT_WITHOUT_RESCALING,
        frozenset({"test_logit_flow_is_invertible_with_exact_log_dets"}),
        "Logit.inverse's log|det J| should be sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]",
    ),
    Caught(
        BITS_WITHOUT_LEVELS,
        frozenset({"test_bits_per_dim_counts_the_dequantization"}),
        "bits_per_dim(0.0, dims=64, levels=17) should be",
    ),
]


def mutated_copy(assignment: Assignment, spec: ExampleSpec, where: str, dest: Path) -> Path:
    """A copy of the reference folder (code, public tests, pytest.ini) with ``spec`` applied."""
    junk = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.ipynb")
    shutil.copytree(assignment.solution_dir, dest, ignore=junk)
    student_file = dest / PACKAGE / f"{spec.file}.py"
    student_file.write_text(spec.apply(student_file.read_text(encoding="utf-8"), where))
    return dest


def failed_tests(output: str, test_file: str) -> set[str]:
    """The ids of the tests pytest's short summary lists as failed or errored."""
    pattern = re.compile(rf"^(?:FAILED|ERROR) tests/{re.escape(test_file)}::(\S+)")
    return {m.group(1) for line in output.splitlines() if (m := pattern.match(line))}


@pytest.mark.slow
@pytest.mark.parametrize(
    "caught", CAUGHT, ids=lambda c: c.mistake if isinstance(c.mistake, str) else c.mistake.name
)
def test_public_checks_catch_common_mistakes(
    assignment: Assignment, tmp_path: Path, caught: Caught
) -> None:
    if isinstance(caught.mistake, str):
        spec, where = find_spec(assignment, caught.mistake)
    else:
        spec, where = caught.mistake, "tests/test_public_suite.py"
    folder = mutated_copy(assignment, spec, str(where), tmp_path / assignment.name)
    test_file = f"test_{spec.part}.py"
    result = run_public_tests(folder, f"tests/{test_file}", "-rfE")
    output = result.stdout
    assert result.returncode == 1, output[-3000:] + result.stderr
    assert failed_tests(output, test_file) == set(caught.failing), output[-3000:]
    assert caught.says in output, output[-3000:]
    assert "Traceback" not in output and "During handling" not in output, output[-3000:]
