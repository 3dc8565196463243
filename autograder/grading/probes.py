"""Small flows of the course's own that the hidden suites hand to student code (in the worker).

Nothing here is secret or an answer: these are probes with known Jacobians, built on the given
``flows.base.Flow``, so that a test can ask "does your ``train``/``Sequential``/``log_prob`` do
the right thing with *this* flow?". Copied into the worker's sandbox beside ``worker.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform

from flows.base import Flow


class Diagonal(Flow):
    """``x = exp(s) * z + b`` elementwise, learnable; records every device it is moved to."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(features))
        self.shift = torch.nn.Parameter(torch.zeros(features))
        self.moved_to: list[str] = []

    def _apply(self, fn, *args, **kwargs):
        # A probe tensor shows where this conversion sends tensors; one it cannot take says nothing.
        with contextlib.suppress(Exception):
            self.moved_to.append(fn(torch.zeros(())).device.type)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * (-self.log_scale).exp()
        return z, -self.log_scale.sum().expand(x.shape[0])

    def set(self, log_scale: list[float], shift: list[float]) -> None:
        with torch.no_grad():
            self.log_scale.copy_(torch.tensor(log_scale, dtype=self.log_scale.dtype))
            self.shift.copy_(torch.tensor(shift, dtype=self.shift.dtype))

    def device_types(self) -> list[str]:
        return sorted({p.device.type for p in self.parameters()})


# ---------------------------------------------------------------------------------------------
# Bases and flows with densities known by hand (change of variables, composition).


def uniform01(dim: int) -> Distribution:
    """``U(0, 1)^dim`` in float64 whose ``log_prob`` is ``-inf`` outside the cube (no error)."""
    low = torch.zeros(dim, dtype=torch.float64)
    high = torch.ones(dim, dtype=torch.float64)
    return Independent(Uniform(low, high, validate_args=False), 1, validate_args=False)


class Exp(Flow):
    """``x = exp(z)``: ``log|det J_f(z)| = sum z``, ``log|det J_{f^{-1}}(x)| = -sum log x``."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.exp(), z.sum(-1)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.log(), -x.log().sum(-1)


class CountingShift(Flow):
    """``x = z + 5``, counting how often each direction runs (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"forward": 0, "inverse": 0}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.calls["forward"] += 1
        return z + 5.0, z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls["inverse"] += 1
        return x - 5.0, x.new_zeros(x.shape[0])


class ScaleShift(Flow):
    """``x = a z + b`` elementwise (learnable, float64): ``log|det J_f| = d log|a|``."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.a * z + self.b, self.a.abs().log().expand(z.shape[0]) * z.shape[1]

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.b) / self.a, -self.a.abs().log().expand(x.shape[0]) * x.shape[1]


class Sinh(Flow):
    """``x = sinh(z)`` elementwise: ``log|det J_f(z)| = sum log cosh z`` (differs per sample)."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sinh(z), torch.cosh(z).log().sum(-1)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.asinh(x)
        return z, -torch.cosh(z).log().sum(-1)


class Swirl(Flow):
    """``x = (z_0, z_1 + z_0^2)``: a shear along a parabola, ``log|det J| = 0``."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.stack([z[:, 0], z[:, 1] + z[:, 0] ** 2], -1), z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.stack([x[:, 0], x[:, 1] - x[:, 0] ** 2], -1), x.new_zeros(x.shape[0])


# ---------------------------------------------------------------------------------------------
# Questions about a student module that need the worker's autograd or devices. The answers are
# the worker's word: the suites use them to find out what happened, and check values themselves.


def count_parameters(module: torch.nn.Module) -> int:
    """How many parameters ``module.parameters()`` reaches (what an optimizer would get)."""
    return sum(1 for _ in module.parameters())


def backward_of_sum(flow: Flow, z: Tensor) -> None:
    """``(x.sum() + log_det.sum()).backward()`` for ``(x, log_det) = flow(z)``.

    The test then fetches ``layer.a.grad`` of its own layers and compares it with the gradient
    it computed itself: a layer that ``forward`` skipped or detached has none, or a wrong one.
    """
    x, log_det = flow(z)
    total = x.sum() + log_det.sum()
    if total.requires_grad:  # else no layer ran: every gradient stays None, which the test says
        total.backward()


def device_types(module: torch.nn.Module) -> list[str]:
    """The device types (``cpu``, ``cuda``) of ``module``'s parameters, sorted."""
    return sorted({p.device.type for p in module.parameters()})


def cuda_available() -> bool:
    """Whether this worker (not the harness) can use a CUDA device."""
    return torch.cuda.is_available()


def call_on_own_device(flow: Flow, direction: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """``flow.<direction>(x)`` with ``x`` moved to the device and dtype of ``flow``'s parameters.

    A flow trained on CUDA stays there; the harness's tensors arrive on the CPU.
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', not {direction!r}")
    parameter = next(flow.parameters())
    with torch.no_grad():
        return getattr(flow, direction)(x.to(device=parameter.device, dtype=parameter.dtype))


def made_passes(flow: torch.nn.Module, direction: str, x: Tensor) -> tuple[object, int]:
    """``flow.<direction>(x)`` and how many MADE evaluations it made (``-1``: it has no MADE).

    MAF's density is one MADE pass and its sampling ``features`` passes. The count is taken at
    the class: for the call, the ``forward`` of every ``flows.maf.MADE`` class in the flow (and
    of its subclasses' own ``forward``) is wrapped, so ``made(x)``, ``made.forward(x)`` and
    ``MADE.forward(made, x)`` all count, and a ``forward`` that calls ``super().forward`` counts
    once (only the outermost call is a pass). Module hooks would miss ``made.forward(x)``.
    """
    from flows.maf import MADE

    mades = [module for module in flow.modules() if isinstance(module, MADE)]
    classes = {
        cls
        for made in [MADE, *mades]
        for cls in (made.__mro__ if made is MADE else type(made).__mro__)
        if issubclass(cls, MADE) and "forward" in vars(cls)
    }
    calls, depth = [0], [0]

    def counting(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls[0] += depth[0] == 0
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return forward

    originals = {cls: vars(cls)["forward"] for cls in classes}
    try:
        for cls, original in originals.items():
            cls.forward = counting(original)
        out = getattr(flow, direction)(x)
    finally:
        for cls, original in originals.items():
            cls.forward = original
    return out, calls[0] if mades else -1


def gradients(loss_fn: Callable[..., Tensor], module: torch.nn.Module, *args: Any) -> Any:
    """The gradients of ``loss_fn(module, *args)`` for each parameter of ``module``, in order.

    ``None`` when the loss is not a tensor attached to the parameters (e.g. taken with
    ``.item()``); a parameter the loss does not reach has ``None``. The test compares the
    numbers with the gradient it computes itself.
    """
    for parameter in module.parameters():
        parameter.grad = None
    loss = loss_fn(module, *args)
    if not isinstance(loss, Tensor) or not loss.requires_grad or loss.numel() != 1:
        return None
    loss.backward()
    return [parameter.grad for parameter in module.parameters()]


# ---------------------------------------------------------------------------------------------
# Gradients. Autograd cannot cross to the harness, so the worker reports what its autograd says,
# and the harness checks those numbers against finite differences of outputs it asked for
# (``moved_parameters_call`` and plain calls): a stray ``.detach()`` shows as a mismatch.


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _selected(out: Any, output: int | None) -> Any:
    return out[output] if output is not None and isinstance(out, (tuple, list)) else out


def gradient_of_mean(
    fn: Callable[..., Any], module: torch.nn.Module, *args: Any, output: int | None = None
) -> dict[str, Any]:
    """Autograd's gradient of ``mean(fn(*args)[output])``, in float64.

    ``parameters``: w.r.t. every trainable parameter of ``module``, flattened and concatenated in
    ``module.parameters()`` order; ``inputs``: w.r.t. each floating-point tensor in ``args``
    (``None`` for the other arguments). A parameter or input the mean does not reach gets
    zeros; ``attached`` is False when the mean is not a tensor autograd can differentiate at all.
    """
    parameters = _trainable(module)
    args = tuple(
        a.detach().clone().requires_grad_(True)
        if isinstance(a, Tensor) and a.is_floating_point()
        else a
        for a in args
    )
    wanted = [isinstance(a, Tensor) and a.requires_grad for a in args]
    inputs = [a for a, w in zip(args, wanted, strict=True) if w]
    value = _selected(fn(*args), output)
    if not isinstance(value, Tensor) or not value.requires_grad or value.numel() == 0:
        total = sum(p.numel() for p in parameters)
        return {
            "parameters": torch.zeros(total, dtype=torch.float64),
            "inputs": [
                torch.zeros_like(a, dtype=torch.float64) if w else None
                for a, w in zip(args, wanted, strict=True)
            ],
            "attached": False,
        }
    grads = torch.autograd.grad(value.mean(), parameters + inputs, allow_unused=True)
    flat = [
        (g if g is not None else torch.zeros_like(p)).detach().double().flatten()
        for g, p in zip(grads[: len(parameters)], parameters, strict=True)
    ]
    input_grads = iter(grads[len(parameters) :])
    per_arg = []
    for a, w in zip(args, wanted, strict=True):
        if w:
            g = next(input_grads)
            per_arg.append((g if g is not None else torch.zeros_like(a)).detach().double())
        else:
            per_arg.append(None)
    return {
        "parameters": torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64),
        "inputs": per_arg,
        "attached": True,
    }


def moved_parameters_call(
    fn: Callable[..., Any], module: torch.nn.Module, direction: Tensor, step: float, *args: Any
) -> Any:
    """``fn(*args)`` with ``module``'s trainable parameters moved by ``step * direction``.

    ``direction`` is flat, in the order of :func:`gradient_of_mean`; the parameters are restored
    exactly afterwards, whatever ``fn`` does.
    """
    parameters = _trainable(module)
    saved = [p.detach().clone() for p in parameters]
    sizes = [p.numel() for p in parameters]
    if direction.numel() != sum(sizes):
        raise ValueError(f"direction has {direction.numel()} entries, parameters {sum(sizes)}")
    try:
        with torch.no_grad():
            for p, d in zip(parameters, direction.split(sizes), strict=True):
                p.add_(step * d.reshape(p.shape).to(dtype=p.dtype, device=p.device))
        return fn(*args)  # with autograd on, as in training (a layer may rely on it)
    finally:
        with torch.no_grad():
            for p, s in zip(parameters, saved, strict=True):
                p.copy_(s)
