"""Solution markers in the reference modules, and the two texts made from them.

A TA writes the code students must write between two comment lines inside a function body::

    def inverse(self, x):
        \"\"\"z = f^{-1}(x) ...\"\"\"
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

:func:`stub_text` replaces each region (marker lines included) by
``raise NotImplementedError("not implemented yet: coupling.AffineCoupling.inverse")`` at the
marker's indentation; :func:`solution_text` only drops the marker lines. Every other byte of the
file is kept. A malformed marker is an :class:`AutograderError` naming the file and the line.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from autograder.errors import AutograderError

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
LINE_LENGTH = 100  # the repository's ruff line length: the stubs stay lint-clean

# Anything that looks like a marker, however mistyped: a near miss such as "## begin solution"
# must be an error, or the solution it was meant to hide would ship in the stub.
_MARKER_LIKE = re.compile(r"#+\s*(BEGIN|END)\s+(SOLUTION|HIDDEN\s+TESTS)", re.IGNORECASE)
_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


@dataclass(frozen=True)
class Region:
    """One marked region: 1-based line numbers of its two marker lines, and who it belongs to."""

    begin: int
    end: int
    indent: str
    qualname: str


@dataclass(frozen=True)
class _Function:
    qualname: str
    column: int
    first_body_line: int
    last_line: int


def stub_text(path: Path, text: str | None = None) -> str:
    """The student's version of ``path``: each solution region becomes a ``raise``.

    The result is checked to compile, so a region that cuts a statement in half is an error here,
    not a broken stub in the students' hands.
    """
    text = read_source(path) if text is None else text
    lines = _split_lines(text)
    part = path.stem
    out: list[str] = []
    cursor = 0
    for region in find_regions(path, text):
        out.extend(lines[cursor : region.begin - 1])
        newline = _line_ending(lines[region.begin - 1])
        out.append(_raise_statement(region.indent, f"{part}.{region.qualname}", newline))
        cursor = region.end
    out.extend(lines[cursor:])
    stub = "".join(out)
    try:
        compile(stub, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _error(
            path,
            exc.lineno or 0,
            f"the stub made from the solution markers is not valid Python ({exc.msg}); "
            "a region must hold whole statements",
        ) from None
    return stub


def solution_text(path: Path, text: str | None = None) -> str:
    """The reference module as the solutions bundle ships it: marker lines removed."""
    text = read_source(path) if text is None else text
    lines = _split_lines(text)
    dropped = {n for r in find_regions(path, text) for n in (r.begin, r.end)}
    return "".join(line for n, line in enumerate(lines, 1) if n not in dropped)


def read_source(path: Path) -> str:
    """The module's text with its line endings as they are (``read_text`` would turn CRLF to LF)."""
    return path.read_bytes().decode("utf-8")


def find_regions(path: Path, text: str) -> list[Region]:
    """The solution regions of a module, in file order, each checked against its function.

    Raises :class:`AutograderError` (``<file>:<line>: ...``) for an unclosed, unopened or
    nested marker, a mistyped marker, a hidden-test marker (those belong in notebooks), a
    region outside a function body, or one that runs past the end of its function.
    """
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise AutograderError(f"{path}:{exc.lineno}: not valid Python: {exc.msg}") from None
    functions = list(_functions(tree, text))
    lines = _split_lines(text)
    regions: list[Region] = []
    open_line: int | None = None
    for number, kind in _markers(path, text):
        if kind == BEGIN:
            if open_line is not None:
                raise _error(
                    path, number, f"nested {BEGIN!r} (the one on line {open_line} is open)"
                )
            open_line = number
            continue
        if open_line is None:
            raise _error(path, number, f"{END!r} without a {BEGIN!r} before it")
        regions.append(_region(path, lines, functions, open_line, number))
        open_line = None
    if open_line is not None:
        raise _error(path, open_line, f"{BEGIN!r} is never closed by {END!r}")
    return regions


def marker_lines(text: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every line that mentions a solution or hidden-test marker.

    Used to scan released files of any kind (modules, notebooks as JSON, handouts) for leaks.
    """
    return [
        (number, line.strip())
        for number, line in enumerate(_split_lines(text), 1)
        if _MARKER_LIKE.search(line)
    ]


def _markers(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """``(line, BEGIN or END)`` of each solution marker; any other marker-like text is an error."""
    comments = _comment_lines(path, text)
    for number, line in marker_lines(text):
        if HIDDEN_BEGIN.lower() in line.lower() or HIDDEN_END.lower() in line.lower():
            raise _error(path, number, "hidden-test markers belong in the notebook, not a module")
        if number not in comments:
            raise _error(path, number, f"marker text {line!r} in a string or after code")
        if line not in (BEGIN, END):
            raise _error(path, number, f"malformed marker {line!r}: write {BEGIN!r} or {END!r}")
        yield number, line


def _comment_lines(path: Path, text: str) -> set[int]:
    """Lines that hold nothing but a comment (so a marker in a string is not a marker)."""
    lines = _split_lines(text)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise AutograderError(f"{path}: cannot tokenize: {exc}") from None
    return {
        tok.start[0]
        for tok in tokens
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip() == tok.string.strip()
    }


def _functions(tree: ast.AST, text: str) -> Iterator[_Function]:
    """Every function with its qualified name (``Class.method``) and the lines its body covers.

    A body runs from the line after the ``def`` header to the last line before code or a comment
    dedents to the ``def`` again, so trailing comments (such as an END marker) belong to it.
    """
    lines = _split_lines(text)
    header_ends = _logical_line_ends(text)

    def walk(node: ast.AST, prefix: str) -> Iterator[_Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{child.name}"
                header_end = min(n for n in header_ends if n >= child.lineno)
                yield _Function(
                    qualname=qualname,
                    column=child.col_offset,
                    first_body_line=header_end + 1,
                    last_line=_block_end(lines, child.end_lineno or child.lineno, child.col_offset),
                )
                yield from walk(child, f"{qualname}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    return walk(tree, "")


def _region(
    path: Path, lines: list[str], functions: list[_Function], begin: int, end: int
) -> Region:
    """The region ``begin..end``, owned by the innermost function whose body holds ``begin``."""
    indent = _indent(lines[begin - 1])
    owners = [
        f for f in functions if f.first_body_line <= begin <= f.last_line and len(indent) > f.column
    ]
    if not owners:
        raise _error(path, begin, "solution region outside any function body")
    owner = max(owners, key=lambda f: f.first_body_line)  # the innermost: it starts last
    if end > owner.last_line or len(_indent(lines[end - 1])) <= owner.column:
        raise _error(
            path,
            end,
            f"solution region opened on line {begin} runs past the end of {owner.qualname}()",
        )
    return Region(begin=begin, end=end, indent=indent, qualname=owner.qualname)


def _raise_statement(indent: str, name: str, newline: str) -> str:
    """The stub's ``raise``, wrapped the way ``ruff format`` would when it is too long."""
    message = f'"not implemented yet: {name}"'
    line = f"{indent}raise NotImplementedError({message})"
    if len(line) <= LINE_LENGTH:
        return line + newline
    wrapped = [f"{indent}raise NotImplementedError(", f"{indent}    {message}", f"{indent})"]
    return "".join(part + newline for part in wrapped)


def _logical_line_ends(text: str) -> list[int]:
    """Line numbers where a logical line ends (a ``def`` header may span several lines)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [tok.start[0] for tok in tokens if tok.type == tokenize.NEWLINE]


def _block_end(lines: list[str], last_statement: int, column: int) -> int:
    """The last line of a block whose last statement ends on ``last_statement``."""
    for number in range(last_statement + 1, len(lines) + 1):
        line = lines[number - 1]
        if line.strip() and len(_indent(line)) <= column:
            return number - 1
    return len(lines)


def _split_lines(text: str) -> list[str]:
    # Only "\n" splits (str.splitlines would also split on form feeds and other separators,
    # and line numbers must agree with the tokenizer's); "\r\n" stays inside the line.
    return _LINE.findall(text)


def _line_ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _error(path: Path, line: int, problem: str) -> AutograderError:
    return AutograderError(f"{path}:{line}: {problem}")
