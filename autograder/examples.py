"""Example submissions derived from the reference: mutants (one realistic bug) and hostile code.

An example is never a copy of code. A spec in ``tests/examples/<assignment>/<kind>.yml`` (a YAML
list) says how to derive it from the reference solution, e.g.::

    - name: affine_logdet_no_abs
      part: change_of_variables        # the part it must lose points in (hostile: optional)
      file: change_of_variables        # the student file it edits (stem)
      description: log of det(A) instead of log|det(A)|
      demo: true                       # optional: graded by ``autograder demo``
      trivial: false                   # optional: true for code that does not attempt the part
                                       # (identity layers, constants); it must earn <= 10% of it
      replace:                         # ``old`` must occur exactly once in the reference file
        old: torch.linalg.slogdet(self.A)[1]
        new: torch.log(torch.linalg.det(self.A))

or ``append: <code>`` instead of ``replace``. :func:`materialize` writes the submission's
``flows/`` folder (the student files only; the grader supplies the given ones). An example of
a part the reference offers but ``course.yml`` does not select is skipped, not an error.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from autograder.config import PACKAGE, Assignment
from autograder.errors import AutograderError

Kind = Literal["mutants", "hostile"]
KINDS: tuple[Kind, ...] = ("mutants", "hostile")
# Built-in examples that need no spec: the reference itself and the released stubs.
REFERENCE, STUBS = "reference", "stubs"
_KEYS = {"name", "part", "file", "replace", "append", "description", "demo", "expect", "trivial"}


@dataclass(frozen=True)
class ExampleSpec:
    """How to derive one example submission from the reference."""

    name: str
    file: str  # stem of the student file to edit, e.g. "coupling"
    part: str | None = None  # the part it is expected to lose points in
    old: str | None = None  # replace ``old`` (exactly one occurrence) by ``new`` ...
    new: str | None = None
    append: str | None = None  # ... or append this code to the file
    description: str = ""
    demo: bool = False
    expect: dict[str, Any] | None = None  # free-form expectations for the tests that grade it
    trivial: bool = False  # code that does not attempt the part: earns at most 10% of it

    def apply(self, source: str, where: str) -> str:
        """The reference ``source`` of ``self.file`` with this spec's edit applied."""
        if self.append is not None:
            return source.rstrip("\n") + "\n\n" + self.append.rstrip("\n") + "\n"
        assert self.old is not None and self.new is not None
        count = source.count(self.old)
        if count != 1:
            raise AutograderError(
                f"{where}: example {self.name!r}: replace.old occurs {count} times in "
                f"{PACKAGE}/{self.file}.py (expected exactly once)"
            )
        return source.replace(self.old, self.new)


def spec_file(assignment: Assignment, kind: Kind) -> Path:
    """``tests/examples/<assignment>/<kind>.yml``."""
    return assignment.examples_dir / f"{kind}.yml"


def load_specs(assignment: Assignment, kind: Kind) -> list[ExampleSpec]:
    """The specs of ``kind`` ("mutants" or "hostile"), checked; a bad one is a one-line error."""
    if kind not in KINDS:
        raise AutograderError(f"unknown example kind {kind!r} (expected one of: {KINDS})")
    path = spec_file(assignment, kind)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutograderError(f"{path}: not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise AutograderError(
            f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, list):
        raise AutograderError(f"{path}: expected a list of examples, got {type(raw).__name__}")
    parsed = [_parse(entry, index, path, assignment, kind) for index, entry in enumerate(raw)]
    # An example of a part the course does not select is kept in the file, not graded.
    specs = [s for s in parsed if not {s.file, s.part} & set(assignment.unselected_parts)]
    names = [spec.name for spec in specs]
    clash = next((n for n in names if names.count(n) > 1 or n in (REFERENCE, STUBS)), None)
    if clash is not None:
        raise AutograderError(f"{path}: example name {clash!r} is not unique (or is built in)")
    return specs


def _parse(entry: Any, index: int, path: Path, assignment: Assignment, kind: Kind) -> ExampleSpec:
    label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"

    def fail(problem: str) -> AutograderError:
        return AutograderError(f"{path}: example {label!r}: {problem}")

    if not isinstance(entry, dict):
        raise fail(f"expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(_KEYS))})")
    name, file, part = entry.get("name"), entry.get("file"), entry.get("part")
    if not isinstance(name, str) or not name.isidentifier():
        raise fail("'name' must be an identifier-like string")
    known = [*assignment.parts, *assignment.unselected_parts]
    parts = ", ".join(known)
    if file not in known:
        raise fail(f"'file' must be one of the student files ({parts}), got {file!r}")
    if part is None and kind == "mutants":
        raise fail("'part' is missing (the part the mutant must lose points in)")
    if part is not None and part not in known:
        raise fail(f"'part' must be one of {parts}, got {part!r}")
    replace, append = entry.get("replace"), entry.get("append")
    if (replace is None) == (append is None):
        raise fail("give exactly one of 'replace: {old, new}' or 'append'")
    old = new = None
    if replace is not None:
        if not isinstance(replace, dict) or set(replace) != {"old", "new"}:
            raise fail("'replace' must be a mapping with exactly the keys 'old' and 'new'")
        old, new = replace["old"], replace["new"]
        if not isinstance(old, str) or not old or not isinstance(new, str) or old == new:
            raise fail("'replace.old' and 'replace.new' must be different strings")
    elif not isinstance(append, str) or not append.strip():
        raise fail("'append' must be a non-empty string of code")
    trivial = entry.get("trivial", False)
    if not isinstance(trivial, bool):
        raise fail("'trivial' must be true or false")
    expect = entry.get("expect")
    if expect is not None and not isinstance(expect, dict):
        raise fail("'expect' must be a mapping")
    return ExampleSpec(
        name=name,
        file=file,
        part=part,
        old=old,
        new=new,
        append=append,
        description=str(entry.get("description", "")),
        demo=bool(entry.get("demo", False)),
        expect=expect,
        trivial=trivial,
    )


def find_spec(assignment: Assignment, name: str) -> tuple[ExampleSpec, Path]:
    """The spec called ``name`` among all kinds, and the file it comes from."""
    for kind in KINDS:
        path = spec_file(assignment, kind)
        if not path.exists():
            continue
        for spec in load_specs(assignment, kind):
            if spec.name == name:
                return spec, path
    raise AutograderError(f"{assignment.examples_dir}: no example called {name!r}")


def materialize(assignment: Assignment, name: str, dest: Path) -> Path:
    """Write example ``name`` as a submission folder ``dest`` holding ``flows/<student files>``.

    ``reference`` is the solution as it is and ``stubs`` the released stubs; any other name is a
    spec from ``mutants.yml`` or ``hostile.yml``. Returns ``dest``.
    """
    dest = Path(dest)
    if name == STUBS:
        source_dir, spec, where = assignment.release_dir / PACKAGE, None, None
    else:
        source_dir = assignment.solution_dir / PACKAGE
        spec, where = (None, None) if name == REFERENCE else find_spec(assignment, name)
    package = dest / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for part in assignment.parts:
        source = source_dir / f"{part}.py"
        if not source.is_file():
            raise AutograderError(f"{source}: not found (example {name!r})")
        if spec is not None and spec.file == part:
            text = spec.apply(source.read_text(encoding="utf-8"), str(where))
            (package / source.name).write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(source, package / source.name)
    return dest
