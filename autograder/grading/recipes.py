"""How every object in a worker was made, and how to make it again in another worker.

A handle that a request returned names an object the worker keeps. The session writes down its
*recipe*: the request that produced it (``import flows.coupling``; the call
``coupling.AffineCoupling(mask, hidden_features=8)`` with its arguments, themselves data or
handles with recipes; ``fetch`` of an attribute), where in the answer it was (``pick``: the
indices into a returned tuple), and the seed that the worker's random generators (``random``,
``torch``, ``numpy``) were seeded with right before the call: the session seeds every call with
a seed of its own choosing (:meth:`Book.next_seed`). Calls that change an object in place
without an answer of their own (``.to()``, ``.double()``, ``.train()``...) are appended to the
object's recipe as *mutations*, in order.

:func:`rebuild` replays a recipe in another session (a worker that never saw the object): the
arguments' handles first (recursively, sharing preserved), the call under its recorded seed, the
mutations, then ``load_state_dict(state, strict=True)`` with the original's ``state_dict()``
fetched as data. A layer that draws masks or degrees at random in ``__init__`` without
registering them comes back identical; anything else the original worker remembers (a table of
recent outputs, an attribute ``train()`` attached) does not come back.

What does not come back: state outside ``state_dict()`` that changed after construction (a
Python flag such as "initialised from the first batch" kept as a plain attribute rather than a
buffer), and construction that depends on earlier constructions (a class-level counter).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Methods that change an object in place and return it: replayed on the rebuilt object.
MUTATORS = frozenset(
    {"to", "double", "float", "half", "bfloat16", "cpu", "cuda", "type", "train", "eval"}
    | {"requires_grad_"}
)
PRODUCERS = frozenset({"import", "call", "get", "recorder"})


@dataclass
class Recipe:
    """How one object (one handle id of one worker generation) was made."""

    op: str  # import, call, get or recorder
    args: dict[str, Any]  # the request's arguments, handles included (call: seed included)
    label: str  # the object's name in messages (``coupling.AffineCoupling``)
    pick: tuple[int | str, ...] = ()  # where in the answer the object was
    mutations: list[tuple[tuple, str, list, dict, int | None]] = field(default_factory=list)


class Book:
    """The recipes of one session's current worker, and the seeds of its calls."""

    def __init__(self, is_handle: Callable[[Any], bool]) -> None:
        self.is_handle = is_handle
        self.recipes: dict[int, Recipe] = {}
        self.generation = -1
        self._seeds = random.Random(0)

    def reseed(self, seed: int) -> None:
        """Calls after a ``seed`` request draw their seeds from ``seed`` (reproducible tests)."""
        self._seeds.seed(seed)

    def next_seed(self) -> int:
        return self._seeds.randrange(2**31)

    def clear(self, generation: int) -> None:
        self.recipes.clear()
        self.generation = generation

    def note(self, op: str, args: dict[str, Any], value: Any, generation: int) -> None:
        """Write down the recipe of every new handle in ``value``, the answer to ``op``."""
        if generation != self.generation:
            self.clear(generation)
        if op == "forget":
            self.recipes.clear()
            return
        if op == "call":
            target = args["target"]
            path = target._path
            if path and path[-1] in MUTATORS and target._id in self.recipes:
                mutation = (path[:-1], path[-1], args["args"], args["kwargs"], args.get("seed"))
                self.recipes[target._id].mutations.append(mutation)
        if op not in PRODUCERS:
            return
        for pick, handle in self._handles(value, ()):
            if not handle._path and handle._id not in self.recipes:
                self.recipes[handle._id] = Recipe(op, args, handle._label, pick)

    def _handles(self, value: Any, pick: tuple) -> list[tuple[tuple, Any]]:
        if self.is_handle(value):
            return [(pick, value)]
        if isinstance(value, (tuple, list)):
            return [h for i, v in enumerate(value) for h in self._handles(v, (*pick, i))]
        if isinstance(value, dict):
            return [h for k, v in value.items() for h in self._handles(v, (*pick, k))]
        return []


def rebuild(handle: Any, into: Any, make_handle: Callable[..., Any]) -> Any:
    """``handle``'s object made again in session ``into`` (see the module doc); a handle there.

    ``make_handle(session, id, path, label, generation)`` builds a handle (``remote.Handle``).
    """
    return _Rebuild(into, make_handle).handle(handle)


class _Rebuild:
    def __init__(self, into: Any, make_handle: Callable[..., Any]) -> None:
        self.into, self.make_handle = into, make_handle
        self.done: dict[tuple[int, int], Any] = {}  # (source session, id) -> rebuilt root

    def handle(self, handle: Any) -> Any:
        source = handle._session
        key = (id(source), handle._id)
        root = self.done.get(key)
        if root is None:
            if (
                handle._generation != source.generation
                or handle._generation != source.book.generation
            ):
                raise ValueError(f"{handle._label} belonged to a worker that was restarted")
            recipe = source.book.recipes.get(handle._id)
            if recipe is None:
                raise ValueError(f"{handle._label}: the grader does not know how it was made")
            root = self.replay(recipe)
            for path, method, args, kwargs, seed in recipe.mutations:
                self.call(walk(root, (*path, method)), args, kwargs, seed, recipe.label)
            original = self.make_handle(source, handle._id, (), recipe.label, handle._generation)
            state = source.request(
                "state", {"target": original}, label=f"{recipe.label}.state_dict"
            )
            if state is not None:
                self.call(root.load_state_dict, [state], {"strict": True}, 0, recipe.label)
            self.done[key] = root
        return walk(root, handle._path)

    def value(self, value: Any) -> Any:
        if self.into.book.is_handle(value):
            return self.handle(value)
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def call(self, target: Any, args: list, kwargs: dict, seed: int | None, label: str) -> Any:
        request = {"target": target, "args": self.value(args), "kwargs": self.value(kwargs)}
        return self.into.request("call", {**request, "seed": seed}, label=label)

    def replay(self, recipe: Recipe) -> Any:
        args, into = recipe.args, self.into
        if recipe.op == "call":
            target = self.handle(args["target"])
            value = self.call(target, args["args"], args["kwargs"], args.get("seed"), recipe.label)
        elif recipe.op == "get":
            value = into.request("get", {"target": self.handle(args["target"])}, label=recipe.label)
        else:  # import, recorder: data only
            value = into.request(recipe.op, args, label=recipe.label)
        for step in recipe.pick:
            value = value[step]
        if not into.book.is_handle(value):
            raise ValueError(f"{recipe.label}: replaying its recipe gave data, not an object")
        return value


def walk(handle: Any, path: tuple) -> Any:
    """The handle at ``path`` (attribute names and indices) below ``handle``."""
    for step in path:
        handle = handle[step] if isinstance(step, int) else getattr(handle, step)
    return handle
