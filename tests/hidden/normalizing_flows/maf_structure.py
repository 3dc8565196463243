"""Whole-pattern structure checks of MADE, MAF and IAF (``test_maf.py``, ``test_iaf.py``).

Every structure check sees the whole pattern, so that no test credits a constant, NaN, dense or
degenerate network: first the outputs must be finite everywhere (a NaN is not "no
dependency"), then no output may depend on a forbidden input, and the dependencies that every
valid MADE has must be there, in the same check. Dependencies are finite-difference Jacobians
measured here at points the harness chose.

What every valid MADE has, exactly:

- any width: the outputs (shift *and* log-scale) of the *last* variable in the order depend on
  the *first* one. Every hidden unit has a degree in ``0..d-2`` (the MADE paper's rule, for
  cyclic, blocked and random degrees alike, each layer starting at or below the previous
  layer's smallest degree), so it sees input ``order[0]`` and feeds output ``order[d-1]``: the
  path exists at every width. Whether it is *live* depends on the weights (ReLUs), so it is
  required in aggregate, over up to ``len(DRAWS)`` seeded draws of random weights; the
  forbidden dependencies must be absent at every draw.
- hidden layers of at least ``8 (d - 1)`` units: every allowed connection. Cyclic or blocked
  degrees cover ``0..d-2`` once a layer has ``d - 1`` units; random degrees miss one of them
  with probability below ``(d-1) (1 - 1/(d-1))^h``, under ``1e-5`` at the tested sizes.
  Narrower layers may legitimately drop connections.
- no hidden layer: every allowed connection is a weight of its own, so every one.
- a MAF layer's density map ``x -> z``: ``z_{order[k]}`` depends only on ``x[order[:k+1]]``,
  on its own ``x`` (the diagonal, ``exp(-log_scale)``) and, in the last variable, on the first.
  An IAF layer's sampling map ``z -> x`` has the same pattern (``test_iaf.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autograder.checks import expect_pair, expect_tensor, jacobians, max_error
from autograder.grading import remote
from autograder.grading.remote import Handle

# A change smaller than this is "no change": far above float64 finite-difference noise (~1e-9)
# and far below what random weights (std 0.3) produce (~1e-2 and more).
MOVED = 1e-6
# Weight draws (their seeds) over which the required dependencies must show; the first is the
# one the suites use (LayerCase's and the randomize fixture's seed), restored afterwards.
DRAWS = (1234, 1235, 1236, 1237, 1238, 1239)


def changed(dtype: torch.dtype) -> float:
    """A derivative above this is a dependency: float64 differences are good to ~1e-9, float32
    ones (step 1e-2, outputs rounded to ~1e-7) to ~1e-5; random weights give ~1e-2."""
    return MOVED if dtype == torch.float64 else 1e-3


def random_order(features: int, seed: int | None) -> torch.Tensor | None:
    """A random permutation of ``0..features-1`` (``None``: the default order)."""
    if seed is None:
        return None
    return torch.randperm(features, generator=torch.Generator().manual_seed(seed))


def allowed_inputs(order: torch.Tensor) -> torch.Tensor:
    """``allowed[i, j]``: the outputs of variable ``i`` may depend on input ``j``."""
    features = len(order)
    allowed = torch.zeros(features, features, dtype=torch.bool)
    for k in range(features):
        allowed[order[k], order[:k]] = True
    return allowed


def first_to_last(order: torch.Tensor) -> torch.Tensor:
    """The one dependency every MADE has: variable ``order[-1]`` on input ``order[0]``."""
    required = torch.zeros(len(order), len(order), dtype=torch.bool)
    if len(order) > 1:
        required[order[-1], order[0]] = True
    return required


def made_outputs(net: Handle, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> cat(shift, log_scale)`` of a MADE, checked (a pair, shapes, finite)."""

    def outputs(v: torch.Tensor) -> torch.Tensor:
        out = net(v)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"{name} should return a pair (shift, log_scale)"
        )
        shape = tuple(v.shape)
        shift, log_scale = (
            expect_tensor(value, f"the {what} of {name} (random weights)", shape, finite=True)
            for what, value in zip(("shift", "log_scale"), out, strict=True)
        )
        return torch.cat([shift, log_scale], dim=1)

    return outputs


def made_values(made: Handle, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, log_scale)`` of ``made`` at ``x``, checked, in float64."""
    both = made_outputs(made, name)(x).double()
    return both[:, : x.shape[1]], both[:, x.shape[1] :]


def expect_made_structure(
    net: Handle, order: torch.Tensor, required: torch.Tensor, dtype: torch.dtype, name: str
) -> None:
    """Finite outputs, no forbidden dependency (at every draw) and every ``required`` one (in
    the shift and in the log-scale, over the draws of :data:`DRAWS`, until all have shown).
    ``net`` is left at the first draw."""
    features = len(order)
    allowed = allowed_inputs(order)
    generator = torch.Generator().manual_seed(features)
    used = {"shift": torch.zeros_like(allowed), "log_scale": torch.zeros_like(allowed)}
    for seed in DRAWS:
        remote.randomize(net, seed)
        x = torch.randn(4, features, dtype=torch.float64, generator=generator).to(dtype)
        J = jacobians(made_outputs(net, name), x)  # (batch, 2 * features, features)
        for what, part in (("shift", J[:, :features]), ("log_scale", J[:, features:])):
            nonzero = (part.abs() > changed(dtype)).any(dim=0)
            leaks = (nonzero & ~allowed).nonzero().tolist()
            assert not leaks, (
                f"{name}: the {what} of variable {leaks[0][0]} depends on x[{leaks[0][1]}], "
                f"which does not come before it in the order ({len(leaks)} forbidden "
                "connection(s) in all)"
            )
            used[what] |= nonzero
        if all(bool((required <= seen).all()) for seen in used.values()):
            break
    remote.randomize(net, DRAWS[0])
    for what, seen in used.items():
        missing = (required & ~seen).nonzero().tolist()
        assert not missing, (
            f"{name} with random weights ({len(DRAWS)} draws): the {what} of variable "
            f"{missing[0][0]} should depend on x[{missing[0][1]}], which comes before it in the "
            f"order, but never changes with it ({len(missing)} of {int(required.sum())} "
            "required connection(s) missing; a constant or disconnected network is not a MADE)"
        )


def expect_autoregressive(
    flow: Handle, name: str, order: torch.Tensor, x: torch.Tensor, direction: str = "inverse"
) -> None:
    """The map ``direction`` (MAF's density ``inverse``, IAF's sampling ``forward``) has the
    autoregressive pattern (see the module doc), finite outputs.

    The identity, a constant, a fixed shift or scale, a dense or a NaN layer fail here, so the
    checks after this one say something about the student's layer. The first-to-last
    dependency is asked over the draws of :data:`DRAWS`; the layer is left at the first.
    """
    d = x.shape[1]
    allowed = allowed_inputs(order) | torch.eye(d, dtype=torch.bool)
    required = first_to_last(order) | torch.eye(d, dtype=torch.bool)
    used = torch.zeros_like(allowed)

    out, into = ("z", "x") if direction == "inverse" else ("x", "z")

    def density(v: torch.Tensor) -> torch.Tensor:
        return expect_pair(getattr(flow, direction)(v), f"{name}.{direction}", *v.shape)[0]

    generator = torch.Generator().manual_seed(d)
    for draw, seed in enumerate(DRAWS):
        if draw:
            remote.randomize(flow, seed)
            x = torch.randn(x.shape, dtype=torch.float64, generator=generator).to(x.dtype)
        density(x)
        now = (jacobians(density, x).abs() > changed(x.dtype)).any(dim=0)
        leaks = (now & ~allowed).nonzero().tolist()
        assert not leaks, (
            f"{name}.{direction}: {out}[{leaks[0][0]}] depends on {into}[{leaks[0][1]}], which "
            f"comes after it in the order; an autoregressive layer's shift and scale of each "
            f"variable see only the variables before it ({len(leaks)} forbidden connection(s))"
        )
        used |= now
        if bool((required <= used).all()):
            break
    if draw:
        remote.randomize(flow, DRAWS[0])
    missing = (required & ~used).nonzero().tolist()
    assert not missing, (
        f"{name}.{direction} with random parameters should shift and scale each variable by "
        f"amounts computed from the variables before it in the order; {out}[{missing[0][0]}] "
        f"does not change with {into}[{missing[0][1]}], so the layer is not autoregressive and "
        "this check cannot credit it"
    )


def expect_moves_later(flow: Handle, name: str, order: torch.Tensor, x: torch.Tensor) -> None:
    """A cheap :func:`expect_autoregressive` for wide layers: finite, and moving ``x[order[0]]``
    alone changes the later variables' ``z``."""
    n, d = x.shape
    moved = x.clone()
    moved[:, order[0]] += 1.0
    z, _ = expect_pair(flow.inverse(torch.cat([x, moved])), f"{name}.inverse", 2 * n, d)
    change = max_error(z[:n, order[1:]], z[n:, order[1:]])
    assert change > MOVED, (
        f"{name}.inverse with random parameters: changing only the first variable in the order, "
        f"x[{int(order[0])}], changed the others by {change:.3g}, so the layer is not "
        "autoregressive and this check cannot credit it"
    )


def expect_density_formula(flow: Handle, made: Handle, name: str, x: torch.Tensor, tol: float):
    """``flow.inverse(x)`` is ``((x - shift) * exp(-log_scale), -sum(log_scale))`` with
    ``(shift, log_scale) = made(x)``, ``made`` asked apart from the layer's own call (MAF)."""
    return expect_one_pass_formula(flow, made, name, x, tol, "inverse")


# The one-pass map of each direction: MAF's density (inverse), IAF's sampling (forward).
ONE_PASS = {
    "inverse": ("(x - shift) * exp(-log_scale)", "-sum(log_scale)", "f^-1"),
    "forward": ("z * exp(log_scale) + shift", "sum(log_scale)", "f"),
}


def expect_one_pass_formula(
    flow: Handle, made: Handle, name: str, v: torch.Tensor, tol: float, direction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flow.<direction>(v)`` is the affine map of :data:`ONE_PASS` with ``(shift,
    log_scale) = made(v)``, ``made`` asked apart from the layer's own call."""
    n, d = v.shape
    formula, det_formula, map_name = ONE_PASS[direction]
    shift, log_scale = made_values(made, v, f"{name}.made")
    out, log_det = expect_pair(getattr(flow, direction)(v), f"{name}.{direction}", n, d)
    sign = 1.0 if direction == "forward" else -1.0
    if direction == "forward":
        expected = v.double() * torch.exp(log_scale) + shift
    else:
        expected = (v.double() - shift) * torch.exp(-log_scale)
    error = max_error(out, expected)
    given = formula.split(" ")[0].strip("(")
    assert error < tol, (
        f"{name}.{direction}({given}) should be {formula} with (shift, log_scale) = "
        f"made({given}); the largest difference is {error:.3g} (sample 0: expected "
        f"{expected[0].tolist()}, got {out[0].tolist()})"
    )
    expected_log_det = sign * log_scale.sum(-1)
    error = max_error(log_det, expected_log_det)
    assert error < tol, (
        f"{name}.{direction} should return log|det J_{map_name}| = {det_formula}; expected "
        f"{expected_log_det.tolist()}, got {log_det.tolist()}"
    )
    return shift, log_scale
