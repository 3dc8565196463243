"""Mutants of the reference solution, generated from its solution regions.

A mutant is the reference module with one small edit of the kind a student makes: a sign flipped,
operands swapped, a comparison or an integer off by one, a term dropped, ``sum`` for ``mean``,
``exp`` for ``log``, the wrong reduction axis, a transpose forgotten, a ``detach`` too many.
Operators walk the syntax tree, but an edit replaces only the source text of the one node it
changes, so every other byte of the file stays as the TA wrote it (and the one-line diff shows
exactly the student's bug). Only nodes wholly inside a ``### BEGIN/END SOLUTION`` region are
mutated: the given code around them is the course's, not the student's.

A mutant's id is a hash of the file, the function, the original code, its occurrence in that
function, the operator and the replacement. It names the same mutant across runs and survives
edits elsewhere in the file, so the reviewed list of equivalent mutants keeps matching.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autograder.markers import Region, find_regions, read_source

# Calls whose result is not a tensor: ``.detach()`` on them is a crash, not a plausible bug.
_NOT_TENSOR_CALLS = {
    "range", "reversed", "len", "next", "zip", "enumerate", "list", "tuple", "dict", "set",
    "max", "min", "int", "float", "bool", "str", "isinstance", "super", "iter", "sorted",
}  # fmt: skip
_NOT_TENSOR_PREFIXES = ("torch.optim", "torch.Generator", "torch.device", "torch.nn.")
# Calls that make a tensor with no gradient to stop, or of zeros (whose negation is itself).
_ZERO_CALLS = {"new_zeros", "zeros_like", "zeros"}
_NO_GRADIENT_CALLS = _ZERO_CALLS | {
    "empty", "empty_like", "new_empty", "arange", "randint", "randn", "rand", "sample",
    "ones", "ones_like", "full", "detach", "tolist", "item", "chunk", "slogdet", "split",
    "manual_seed", "parameters", "standard_normal",  # a generator, an iterator, a distribution
}  # fmt: skip
_REDUCTIONS = {"sum", "mean", "logsumexp", "prod", "chunk", "softmax", "log_softmax", "cumsum"}
_SWAP_METHODS = {"sum": "mean", "mean": "sum", "exp": "log", "log": "exp"}
_OPERATOR_TEXT = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@",
    ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%",
}  # fmt: skip
_FLIPPED_OPERATOR = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.MatMult, ast.Pow, ast.FloorDiv, ast.Mod)
_COMPARISON = {
    ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
}  # fmt: skip
# Operands that need parentheses when moved next to an operator.
_LOOSE = (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Lambda, ast.NamedExpr)


@dataclass(frozen=True)
class Edit:
    """Replace the source of ``node`` (a span of the file) by ``new``; ``operator`` names why."""

    node: ast.AST
    operator: str
    new: str


@dataclass(frozen=True)
class Mutant:
    """One edit of one student file, applied: ``text`` is the whole mutated module."""

    id: str
    part: str  # the file's stem, e.g. "coupling"
    file: str  # e.g. "coupling.py"
    qualname: str  # the function whose solution region was edited
    line: int  # 1-based line where the edit starts
    operator: str
    old_line: str  # the changed line(s) before and after, whitespace-collapsed
    new_line: str
    text: str

    @property
    def diff(self) -> str:
        """``file:line  old -> new``: the one-line diff a report prints."""
        return f"{self.file}:{self.line}  {self.old_line} -> {self.new_line}"


def mutants_of_file(path: Path) -> list[Mutant]:
    """Every mutant of one reference module, in file order, without duplicates.

    Each is valid Python (an edit that does not parse is dropped) and differs from the reference
    only inside a solution region.
    """
    text = read_source(path)
    regions = find_regions(path, text)
    tree = ast.parse(text, filename=str(path))
    source = _Source(text)
    seen: set[str] = {text}
    occurrences: dict[tuple[str, str], int] = {}
    mutants: list[Mutant] = []
    nodes = sorted(
        (n for n in ast.walk(tree) if _inside(n, regions)),
        key=lambda n: (n.lineno, n.col_offset, -(n.end_lineno or 0), -(n.end_col_offset or 0)),
    )
    for node in nodes:
        region = next(r for r in regions if _inside(node, [r]))
        original = source.segment(node)
        key = (region.qualname, original)
        occurrence = occurrences[key] = occurrences.get(key, -1) + 1
        for edit in edits(node, source):
            mutated = source.replace(edit.node, edit.new)
            if mutated in seen or not _parses(mutated):
                continue
            seen.add(mutated)
            where = f"{path.name}:{region.qualname}:{original}:{occurrence}"
            identity = f"{where}:{source.segment(edit.node)}:{edit.operator}:{edit.new}"
            old_line, new_line = _changed_lines(text, mutated, edit.node)
            mutants.append(
                Mutant(
                    id=hashlib.sha256(identity.encode()).hexdigest()[:12],
                    part=path.stem,
                    file=path.name,
                    qualname=region.qualname,
                    line=edit.node.lineno,
                    operator=edit.operator,
                    old_line=old_line,
                    new_line=new_line,
                    text=mutated,
                )
            )
    return mutants


def edits(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """Every operator's edits of one node (the node's own span only)."""
    for operator in OPERATORS:
        yield from operator(node, source)


class _Source:
    """The module's text, addressed the way ``ast`` addresses it (line, UTF-8 byte column)."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.line_starts = [0]
        for index, byte in enumerate(self.data):
            if byte == ord("\n"):
                self.line_starts.append(index + 1)

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self.line_starts[node.lineno - 1] + node.col_offset
        end = self.line_starts[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
        return start, end

    def segment(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.data[start:end].decode("utf-8")

    def replace(self, node: ast.AST, new: str) -> str:
        start, end = self.span(node)
        return (self.data[:start] + new.encode("utf-8") + self.data[end:]).decode("utf-8")


# --- operators: each takes a node and yields the edits it makes of that node ---------------------


def _operand(node: ast.AST, source: _Source) -> str:
    """An operand's text, parenthesized when it would bind looser than a binary operator."""
    text = source.segment(node)
    return f"({text})" if isinstance(node, _LOOSE) else text


def sign_flip(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``-x`` -> ``x``; ``a + b`` <-> ``a - b``, ``a * b`` <-> ``a / b``; ``return v`` -> ``-v``."""
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and not getattr(node, "_axis", False)
    ):
        yield Edit(node, "unary_minus_removed", _operand(node.operand, source))
    if isinstance(node, ast.BinOp) and type(node.op) in _FLIPPED_OPERATOR:
        flipped = _OPERATOR_TEXT[_FLIPPED_OPERATOR[type(node.op)]]
        new = f"{_operand(node.left, source)} {flipped} {_operand(node.right, source)}"
        yield Edit(node, "arithmetic_operator", new)
    for value in _returned_values(node):
        negated = isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub)
        # -0 is 0 (equivalent); a list or a ``tolist()`` cannot be negated (no plausible bug).
        plain = _method(value) not in _ZERO_CALLS | {"tolist"}
        if not negated and plain and not isinstance(value, (ast.List, ast.ListComp)):
            yield Edit(value, "unary_minus_added", f"-{_operand(value, source)}")


def _returned_values(node: ast.AST) -> list[ast.expr]:
    if not isinstance(node, ast.Return) or node.value is None:
        return []
    value = node.value
    return list(value.elts) if isinstance(value, ast.Tuple) else [value]


def swap_operands(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``a - b`` -> ``b - a`` for a non-commutative operator (``-``, ``/``, ``@``, ``**`` ...)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _NON_COMMUTATIVE):
        symbol = _OPERATOR_TEXT[type(node.op)]
        new = f"{_operand(node.right, source)} {symbol} {_operand(node.left, source)}"
        yield Edit(node, "swap_operands", new)


def comparison(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=`` (a single comparison)."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARISON:
        new_op = _COMPARISON[type(node.ops[0])]
        left, right = _operand(node.left, source), _operand(node.comparators[0], source)
        yield Edit(node, "comparison", f"{left} {new_op} {right}")


def off_by_one(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """An integer literal +/- 1, and a ``range(n)`` bound +/- 1."""
    value = _axis_value(node)  # ``-1`` is one literal: ``-2`` and ``0``, never ``-0``
    if value is not None and not getattr(node, "_axis", False):  # axes: see reduction_axis
        yield Edit(node, "integer_plus_one", str(value + 1))
        yield Edit(node, "integer_minus_one", str(value - 1))
    if isinstance(node, ast.Call) and _dotted(node.func) == "range":
        for arg in node.args:
            text = _operand(arg, source)
            yield Edit(arg, "range_bound_plus_one", f"{text} + 1")
            yield Edit(arg, "range_bound_minus_one", f"{text} - 1")


def drop_term(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``a + b`` -> ``a`` or ``b``; ``a - b`` -> ``a`` or ``-b``: a term of a sum forgotten."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        yield Edit(node, "drop_right_term", source.segment(node.left))
        right = source.segment(node.right)
        kept = right if isinstance(node.op, ast.Add) else f"-{_operand(node.right, source)}"
        yield Edit(node, "drop_left_term", kept)


def swap_function(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``sum`` <-> ``mean`` and ``exp`` <-> ``log``, as methods or as ``torch.`` functions."""
    if isinstance(node, ast.Attribute) and node.attr in _SWAP_METHODS:
        operator = "sum_mean" if node.attr in ("sum", "mean") else "exp_log"
        yield Edit(node, operator, f"{source.segment(node.value)}.{_SWAP_METHODS[node.attr]}")


def reduction_axis(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """The axis of a reduction (``dim=`` or the first argument of ``.sum(-1)``) changed."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return
    if node.func.attr not in _REDUCTIONS:
        return
    axes = [k.value for k in node.keywords if k.arg in ("dim", "axis")]
    if node.func.attr in ("sum", "mean", "prod", "logsumexp", "cumsum") and node.args:
        axes.append(node.args[0])
    for axis in axes:
        value = _axis_value(axis)
        if value is None:
            continue
        # off_by_one and sign_flip leave an axis to this operator (``sum(-0)`` is no bug).
        for part in (axis, getattr(axis, "operand", axis)):
            part._axis = True  # type: ignore[attr-defined]
        for other in {1: (0, -1), 0: (1, -1), -1: (0,)}.get(value, (0,)):
            yield Edit(axis, "reduction_axis", str(other))


def transpose_dropped(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """``A.T`` / ``A.mT`` / ``A.t()`` / ``A.transpose(...)`` -> ``A``."""
    if isinstance(node, ast.Attribute) and node.attr in ("T", "mT"):
        yield Edit(node, "transpose_dropped", source.segment(node.value))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("t", "transpose")
    ):
        yield Edit(node, "transpose_dropped", source.segment(node.func.value))


def detach_added(node: ast.AST, source: _Source) -> Iterator[Edit]:
    """A call's result ``f(x)`` -> ``f(x).detach()``: gradients stop flowing through it."""
    if not isinstance(node, ast.Call) or not getattr(node, "_tensor_use", False):
        return
    name = _dotted(node.func)
    if name in _NOT_TENSOR_CALLS or name.startswith(_NOT_TENSOR_PREFIXES):
        return
    if _method(node) in _NO_GRADIENT_CALLS:
        return
    yield Edit(node, "detach_added", f"{source.segment(node)}.detach()")


OPERATORS: list[Callable[[ast.AST, _Source], Iterator[Edit]]] = [
    reduction_axis,  # first: it marks its axes so off_by_one does not repeat them
    sign_flip,
    swap_operands,
    comparison,
    off_by_one,
    drop_term,
    swap_function,
    transpose_dropped,
    detach_added,
]


# --- helpers -------------------------------------------------------------------------------------


def _inside(node: ast.AST, regions: list[Region]) -> bool:
    """Whether ``node`` is an expression or statement wholly between a region's markers."""
    if not isinstance(node, (ast.expr, ast.stmt)):
        return False
    _mark_tensor_uses(node)
    end = node.end_lineno or node.lineno
    return any(r.begin < node.lineno and end < r.end for r in regions)


def _mark_tensor_uses(node: ast.AST) -> None:
    """Mark the expressions used as a tensor value: the ones ``detach_added`` may detach.

    An operand of arithmetic, a returned value, the value assigned to one name. Not a call made
    for its effect (``loss.backward()``), unpacked (``z, ladj = flow(z)``), read by attribute
    (``slogdet(A).logabsdet``) or passed on: ``.detach()`` there is a crash, not a student's bug.
    """
    uses: list[ast.AST] = []
    if isinstance(node, ast.BinOp):
        uses += [node.left, node.right]
    elif isinstance(node, ast.UnaryOp):
        uses.append(node.operand)
    elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        uses.append(node.value)
    uses += _returned_values(node)
    for use in uses:
        use._tensor_use = True  # type: ignore[attr-defined]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_int(node.operand):
        node.operand._axis = True  # type: ignore[attr-defined] - the 1 of a literal -1


def _method(node: ast.AST) -> str:
    """``new_zeros`` for ``z.new_zeros(...)`` or ``torch.zeros`` -> ``zeros``; else ``""``."""
    if isinstance(node, ast.Call):
        node = node.func
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _axis_value(node: ast.AST) -> int | None:
    """The integer of ``1`` or ``-1`` as written; ``None`` for anything else."""
    if _is_int(node):
        return node.value  # type: ignore[attr-defined]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_int(node.operand):
        return -node.operand.value  # type: ignore[attr-defined]
    return None


def _is_int(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    return isinstance(node, ast.Constant) and isinstance(value, int) and not isinstance(value, bool)


def _dotted(node: ast.AST) -> str:
    """``torch.linalg.solve`` for an attribute chain of names; ``""`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def _changed_lines(before: str, after: str, node: ast.AST) -> tuple[str, str]:
    """The lines the edit touched, before and after, each collapsed onto one line."""
    old_lines = before.split("\n")
    new_lines = after.split("\n")
    first = node.lineno - 1
    tail = len(old_lines) - (node.end_lineno or node.lineno)  # lines after the edit: unchanged
    old = old_lines[first : len(old_lines) - tail]
    new = new_lines[first : len(new_lines) - tail]
    return " ".join(" ".join(old).split()), " ".join(" ".join(new).split())
