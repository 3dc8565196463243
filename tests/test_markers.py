"""Solution markers -> stubs and solution texts (``autograder.markers``), on synthetic modules."""

from __future__ import annotations

import ast
from pathlib import Path
from textwrap import dedent

import pytest

from autograder.config import load_course
from autograder.errors import AutograderError
from autograder.markers import LINE_LENGTH, find_regions, solution_text, stub_text

REPO = Path(__file__).resolve().parents[1]

SOURCE = dedent(
    '''\
    """A module: x = f(z)."""

    import torch


    class AffineCoupling:
        """Doc."""

        def __init__(self, mask):
            self.mask = mask

        def inverse(
            self,
            x,
        ):
            """z = f^{-1}(x)."""
            ### BEGIN SOLUTION
            z = x * 2
            return z, 0
            ### END SOLUTION

        def forward(self, z):
            ### BEGIN SOLUTION
            return z
            ### END SOLUTION
        # a trailing comment stays


    def log_prob(x):
        if x:
            ### BEGIN SOLUTION
            y = 1
            ### END SOLUTION
            return y
        return 0
    '''
)

STUB = dedent(
    '''\
    """A module: x = f(z)."""

    import torch


    class AffineCoupling:
        """Doc."""

        def __init__(self, mask):
            self.mask = mask

        def inverse(
            self,
            x,
        ):
            """z = f^{-1}(x)."""
            raise NotImplementedError("not implemented yet: coupling.AffineCoupling.inverse")

        def forward(self, z):
            raise NotImplementedError("not implemented yet: coupling.AffineCoupling.forward")
        # a trailing comment stays


    def log_prob(x):
        if x:
            raise NotImplementedError("not implemented yet: coupling.log_prob")
            return y
        return 0
    '''
)


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "coupling.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_stub_replaces_each_region_and_keeps_everything_else(module: Path) -> None:
    assert stub_text(module) == STUB


def test_solution_text_drops_only_the_marker_lines(module: Path) -> None:
    kept = [line for line in SOURCE.splitlines(keepends=True) if "### " not in line]
    assert solution_text(module) == "".join(kept)
    compile(solution_text(module), str(module), "exec")


def test_regions_are_named_by_qualified_name(module: Path) -> None:
    regions = find_regions(module, SOURCE)
    assert [(r.begin, r.end, r.qualname) for r in regions] == [
        (17, 20, "AffineCoupling.inverse"),
        (23, 25, "AffineCoupling.forward"),
        (31, 33, "log_prob"),
    ]


def test_a_nested_function_names_its_outer_function(tmp_path: Path) -> None:
    source = "def train():\n    def step():\n        ### BEGIN SOLUTION\n        return 1\n"
    source += "        ### END SOLUTION\n    return step\n"
    stub = stub_text(tmp_path / "train.py", source)
    assert 'NotImplementedError("not implemented yet: train.train.step")' in stub


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_bytes_outside_regions_are_preserved(tmp_path: Path, newline: str) -> None:
    body = [
        "def f(x):  ",
        "    ### BEGIN SOLUTION",
        "    return x",
        "    ### END SOLUTION",
        "# end",
    ]
    path = tmp_path / "m.py"
    path.write_bytes(newline.join(body).encode())  # trailing spaces kept, no final newline
    stub = stub_text(path)
    expected = ["def f(x):  ", '    raise NotImplementedError("not implemented yet: m.f")', "# end"]
    assert stub == newline.join(expected)


def test_a_raise_too_long_for_a_line_is_wrapped_like_ruff_format(tmp_path: Path) -> None:
    name = "shift_and_log_scale_of_the_passive_half"
    source = f"class Coupling:\n    def {name}(self):\n        ### BEGIN SOLUTION\n"
    source += "        return 1\n        ### END SOLUTION\n"
    stub = stub_text(tmp_path / "coupling.py", source)
    assert all(len(line) <= LINE_LENGTH for line in stub.splitlines())
    assert stub.endswith(
        "        raise NotImplementedError(\n"
        f'            "not implemented yet: coupling.Coupling.{name}"\n'
        "        )\n"
    )


MALFORMED = {
    "unclosed": ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", 2, "never closed"),
    "end without begin": ("def f():\n    return 1\n    ### END SOLUTION\n", 3, "without"),
    "nested": (
        "def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    return 1\n"
        "    ### END SOLUTION\n",
        3,
        "nested",
    ),
    "module level": ("x = 0\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", 2, "outside"),
    "class body": (
        "class A:\n    ### BEGIN SOLUTION\n    x = 1\n    ### END SOLUTION\n",
        2,
        "outside",
    ),
    "into the next function": (
        "def f():\n    ### BEGIN SOLUTION\n    return 1\n\n\ndef g():\n    ### END SOLUTION\n"
        "    pass\n",
        7,
        "runs past the end of f()",
    ),
    "dedented end": (
        "def f():\n    ### BEGIN SOLUTION\n    return 1\n### END SOLUTION\n",
        4,
        "runs past the end of f()",
    ),
    "hidden tests": ("def f():\n    ### BEGIN HIDDEN TESTS\n    return 1\n", 2, "hidden-test"),
    "mistyped": ("def f():\n    ## Begin Solution\n    return 1\n", 2, "malformed marker"),
    "inside a string": ("def f():\n    s = '''\n    ### BEGIN SOLUTION\n'''\n", 3, "string"),
    "half a statement": (
        "def f():\n    x = (1,\n    ### BEGIN SOLUTION\n    2)\n    ### END SOLUTION\n"
        "    return x\n",
        2,
        "not valid Python",
    ),
}


@pytest.mark.parametrize("source, line, problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_markers_name_file_and_line(
    tmp_path: Path, source: str, line: int, problem: str
) -> None:
    path = tmp_path / "part.py"
    path.write_text(source, encoding="utf-8")
    with pytest.raises(AutograderError) as caught:
        stub_text(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message
    assert "\n" not in message


def test_every_reference_module_gives_a_compiling_stub_without_its_solution() -> None:
    assignment = load_course(REPO).assignment("normalizing_flows")
    for part in assignment.parts:
        path = assignment.solution_dir / "flows" / f"{part}.py"
        regions = find_regions(path, path.read_text(encoding="utf-8"))
        stub = stub_text(path)
        assert regions, f"{path} has no solution region"
        assert "SOLUTION" not in stub
        raises = sorted(
            (node.lineno, node.exc.args[0].value)
            for node in ast.walk(ast.parse(stub))
            if isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and getattr(node.exc.func, "id", "") == "NotImplementedError"
        )
        raised = [message for _, message in raises]
        assert raised == [f"not implemented yet: {part}.{r.qualname}" for r in regions]
