"""The worker: the only process that runs student code, inside an OS sandbox.

Started by a sandbox backend (:mod:`autograder.grading.sandbox`) as::

    python -I -B worker.py SUBMISSION THREADS REQUESTS_FD REPLIES_FD

with requests arriving on one descriptor and replies leaving on the other (:mod:`protocol`
frames). It sees the student's ``flows/`` package (their five files plus the course's given
files), this file, ``protocol.py`` and ``probes.py``: no hidden test, no solution, no path of
the course repository or of the output folder, no secret. Student objects stay here; the harness
names them by handle. Nothing this process says is trusted: the harness checks every value it
gets back.

It is a plain module, not part of the ``autograder`` package (which the sandbox cannot see).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

MAX_MESSAGE = 2000  # characters of an exception message sent back


class StopTraining(Exception):
    """Raised by a :class:`Recorder` when the loss so far cannot reach the harness's target."""


class Recorder:
    """A ``callback(step, loss)`` for ``train``: keeps every step, may stop a hopeless run.

    ``stop``: ``{"after": n, "window": w, "above": b}`` stops training (raises
    :class:`StopTraining`) once ``n`` steps are in and the mean of the last ``w`` losses is
    above ``b`` (or below ``"below"``, if given, or not a number); the harness sets the bounds
    far outside what every correct ``train`` reaches. ``"statistic": "median"`` judges the
    window's median instead: a correct run's one-step loss spikes move a mean, not a median.
    """

    def __init__(self, stop: dict[str, Any] | None) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.stop = stop
        self.stopped = False

    def __call__(self, step: Any, loss: Any) -> None:
        self.steps.append(int(step))
        self.losses.append(float(loss))
        rule = self.stop
        if rule and len(self.losses) >= rule["after"]:
            recent = self.losses[-rule["window"] :]
            statistic = rule.get("statistic", "mean")
            value = _median(recent) if statistic == "median" else sum(recent) / len(recent)
            low, high = rule.get("below", -float("inf")), rule.get("above", float("inf"))
            if not low <= value <= high:  # NaN too
                self.stopped = True
                raise StopTraining(
                    f"stopped at step {len(self.losses)}: the {statistic} loss of the last "
                    f"{len(recent)} steps is {value:.3f}"
                )


def _median(values: list[float]) -> float:
    """The median of ``values``; NaN when any is NaN (a NaN loss must stop the run)."""
    if any(v != v for v in values):
        return float("nan")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class Worker:
    """The request loop and the objects it keeps for the harness."""

    def __init__(self, submission: str, requests: int, replies: int) -> None:
        self.requests, self.replies = requests, replies
        self.submission = os.path.realpath(submission)
        self.objects: dict[int, Any] = {}
        self.known: dict[int, int] = {}  # id(obj) -> handle: one object, one handle
        self.next_id = 1

    # -- handles -------------------------------------------------------------------------------

    def keep(self, obj: Any) -> dict[str, Any]:
        # The same object comes back under the handle it already has (``layer.double()`` names
        # ``layer``), so the harness can tell which object a mutating call changed.
        ident = self.known.get(id(obj), 0)
        if self.objects.get(ident) is not obj:
            ident = self.next_id
            self.next_id += 1
            self.objects[ident] = obj
            self.known[id(obj)] = ident
        kind = type(obj)
        if kind.__name__ == "module":
            name = str(obj.__name__)
        else:
            name = f"{kind.__module__}.{kind.__qualname__}"
        return {"$handle": [ident, [], name.removeprefix("flows.")[:200]]}

    def resolve(self, ident: int, path: tuple) -> Any:
        obj = self.objects[ident]
        for step in path:
            obj = obj[step] if type(step) is int else getattr(obj, step)
        return obj

    # -- operations ----------------------------------------------------------------------------

    def op_import(self, module: str) -> Any:
        import importlib

        if not (module in ("flows", "probes") or module.startswith("flows.")):
            raise ValueError(f"only the flows package may be imported, not {module!r}")
        try:
            return importlib.import_module(module)
        except BaseException as exc:
            raise ImportFailure(import_failure(exc, module)) from None

    def op_call(self, target: Any, args: list, kwargs: dict, seed: int | None = None) -> Any:
        """``target(*args, **kwargs)``, after seeding every random generator with ``seed``.

        The harness chooses and records the seed of every call, so that a rebuild replays a
        constructor that draws masks or degrees at random under the same draws.
        """
        if seed is not None:
            self.op_seed(seed)
        return target(*args, **kwargs)

    def op_get(self, target: Any) -> Any:
        return target

    def op_seed(self, seed: int) -> None:
        import random

        import torch

        random.seed(seed)
        torch.manual_seed(seed)
        numpy = sys.modules.get("numpy")  # seeded only where student code imported it
        if numpy is not None:
            numpy.random.seed(seed % 2**32)

    def op_state(self, target: Any) -> dict[str, Any] | None:
        """``target.state_dict()`` as plain CPU tensors (data the harness fetches and resends);
        ``None`` for an object that is not a ``torch.nn.Module``."""
        import torch

        if not isinstance(target, torch.nn.Module):
            return None
        return {str(k): v.detach().cpu().clone() for k, v in target.state_dict().items()}

    def op_forget(self) -> None:
        self.objects.clear()
        self.known.clear()

    def op_randomize(self, target: Any, seed: int, std: float) -> int:
        """Re-draw every trainable parameter of ``target`` from N(0, std^2); returns how many."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        count = 0
        with torch.no_grad():
            for parameter in target.parameters():
                if parameter.requires_grad:
                    draw = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                    parameter.copy_(std * draw)
                    count += 1
        return count

    def op_trace(self, target: Any, args: list, kwargs: dict) -> Any:
        """Call ``target`` and list the torch functions it used (a spy, not a guarantee)."""
        import torch

        names: list[str] = []

        class Spy(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if len(names) < 100_000:
                    names.append(str(getattr(func, "__name__", "?"))[:100])
                return func(*args, **(kwargs or {}))

        with Spy():
            value = target(*args, **kwargs)
        return (value, sorted(set(names)))

    def op_recorder(self, stop: dict[str, Any] | None) -> Recorder:
        return Recorder(stop)

    # -- the loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        import protocol

        def handle(ident: int, path: tuple, name: str) -> Any:
            return self.resolve(ident, path)

        while True:
            try:
                header, blobs = protocol.read_frame(self.requests)
            except protocol.ChannelClosed:
                return
            reply_blobs: list[bytes] = []
            try:
                op = getattr(self, "op_" + str(header.get("op")))
                arguments = protocol.decode(header.get("args", {}), blobs, handle)
                value = op(**arguments)
                reply = {"ok": protocol.encode(value, reply_blobs, self.keep)}
            except BaseException as exc:  # noqa: BLE001 - every failure is an answer
                reply_blobs = []
                reply = {"error": self.describe(exc)}
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            protocol.write_frame(self.replies, {"id": header.get("id"), **reply}, reply_blobs)

    def describe(self, exc: BaseException) -> dict[str, str]:
        """Type, message and the student line an exception came from."""
        try:
            message = str(exc)
        except BaseException:  # noqa: BLE001 - a hostile __str__
            message = "(an exception whose message could not be read)"
        where = ""
        frames = traceback.extract_tb(exc.__traceback__)
        mine = [f for f in frames if os.path.realpath(f.filename).startswith(self.submission)]
        if mine:
            where = f"{os.path.basename(mine[-1].filename)}, line {mine[-1].lineno}"
        return {"type": type(exc).__name__[:100], "message": message[:MAX_MESSAGE], "where": where}


class ImportFailure(Exception):
    """A student module did not import; its message is the one line the student sees."""


def import_failure(exc: BaseException, module: str) -> str:
    """``coupling.py does not import: SyntaxError: invalid syntax (coupling.py, line 12)``."""
    name = module.rpartition(".")[2] + ".py"
    if isinstance(exc, SyntaxError):
        where = f"{os.path.basename(exc.filename)}, " if exc.filename else ""
        detail = f"{type(exc).__name__}: {exc.msg} ({where}line {exc.lineno})"
    elif isinstance(exc, SystemExit):
        detail = f"SystemExit({exc.code!r}) raised while importing"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "flows" in f.filename]
        where = ""
        if frames:
            where = f" ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})"
        text = str(exc).splitlines()[0] if str(exc) else ""
        detail = f"{type(exc).__name__}: {text}{where}"
    return f"{name} does not import: {detail}"[:MAX_MESSAGE]


def main(argv: list[str]) -> None:
    submission, threads, requests, replies = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [submission, here]
    sys.dont_write_bytecode = True
    import protocol
    import torch

    torch.set_num_threads(threads)
    protocol.write_frame(replies, {"ready": True, "pid": os.getpid(), "uid": os.getuid()})
    Worker(submission, requests, replies).serve()


if __name__ == "__main__":
    main(sys.argv)
