"""Training needs autograd's gradients: the worker's reports checked against finite differences.

Autograd cannot cross to the harness, so the worker reports what its autograd says
(``probes.gradient_of_mean``) and the harness checks those numbers against central differences
of outputs it asked for itself (``probes.moved_parameters_call`` and plain calls) along a random
direction: a stray ``.detach()`` or a value computed outside autograd shows as a mismatch.
"""

from __future__ import annotations

from typing import Any

import torch

from autograder.checks.values import expect_tensor, kind
from autograder.grading.remote import Handle

DIRECTION_SEED = 17
EPS, TOL = 1e-6, 1e-6


def expect_gradients(
    probes: Handle, fn: Handle, module: Handle, args: tuple, what: str, of: str, output=None
) -> None:
    """The gradient of ``mean(fn(*args)[output])`` (w.r.t. ``module``'s parameters and each
    float64 tensor in ``args``) must match finite differences of outputs measured here.

    ``what`` names the call (``AffineCoupling(mask=[1, 0]).forward``), ``of`` the output (``the
    output``, ``log|det J|``).
    """
    got = probes.gradient_of_mean(fn, module, *args, output=output)

    def mean_of(out: Any) -> float:
        if output is not None:
            assert isinstance(out, tuple) and len(out) > output, f"{what} returned {kind(out)}"
            out = out[output]
        return float(expect_tensor(out, f"{of} of {what}", finite=True).double().mean())

    generator = torch.Generator().manual_seed(DIRECTION_SEED)
    checks: list[tuple[str, float, float]] = []  # (with respect to, autograd, measured)
    assert isinstance(got, dict) and {"parameters", "inputs"} <= set(got), (
        f"{what}: the worker's gradient report is malformed"
    )
    grad = expect_tensor(got["parameters"], "the gradient", finite=True).double()
    if grad.numel():
        direction = torch.randn(grad.numel(), dtype=torch.float64, generator=generator)
        direction /= direction.norm()
        plus = mean_of(probes.moved_parameters_call(fn, module, direction, EPS, *args))
        minus = mean_of(probes.moved_parameters_call(fn, module, direction, -EPS, *args))
        checks.append(
            ("the flow's parameters", float(grad @ direction), (plus - minus) / (2 * EPS))
        )
    for index, (arg, grad) in enumerate(zip(args, got["inputs"], strict=True)):
        if not isinstance(arg, torch.Tensor) or grad is None:
            continue
        grad = expect_tensor(grad, "the gradient", tuple(arg.shape), finite=True).double()
        direction = torch.randn(arg.shape, dtype=torch.float64, generator=generator)
        direction /= direction.norm()
        moved = [list(args), list(args)]
        moved[0][index], moved[1][index] = arg + EPS * direction, arg - EPS * direction
        plus, minus = (mean_of(fn(*m)) for m in moved)
        checks.append(("the input", float((grad * direction).sum()), (plus - minus) / (2 * EPS)))
    for wrt, autograd, measured in checks:
        assert abs(autograd - measured) <= TOL * (1 + abs(measured)), (
            f"{what}: training follows the gradient, so the gradient of the mean of {of} with "
            f"respect to {wrt} should match how it changes; along a random direction it changes "
            f"at rate {measured:.6g} (finite differences), but autograd's gradient gives "
            f"{autograd:.6g} (is a tensor detached, or computed outside autograd, on the way?)"
        )
