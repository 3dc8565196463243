"""``autograder gradescope``: this grader packaged as a Gradescope autograder zip.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once (as root) to
build the image, then ``run_autograder`` per submission with the student's upload in
``/autograder/submission``; the result goes to ``/autograder/results/results.json``.

**Installing** (``setup.sh``). Gradescope's base image is Ubuntu 22.04 with Python 3.10, whose
pip refuses a root install into the system Python on newer images ("externally managed"), so
everything goes into a virtual environment, ``/autograder/venv``. torch comes first, pinned to
the version tested here, from PyTorch's CPU index (Gradescope has no GPU, and the CPU wheel is a
fraction of the CUDA one); then ``pip install /autograder/source`` installs the grader with the
lower bounds of ``pyproject.toml``'s dependencies: pyproject is the one list of what the grader
needs, and pins copied from the staff machine may have no wheel for Python 3.10.

**The notebook.** The notebook stage (:mod:`autograder.grading.notebook_stage`) needs nbgrader's
*source* notebook: nbgrader's ``generate_assignment`` records its cells, hidden tests included,
and ``autograde`` puts those cells back into the student's notebook before running it. The
grader reads it from ``solutions/<assignment>/``, which the zip never ships. The source's only
secrets beyond the hidden tests (which the zip carries anyway, as it does the hidden suites) are
its solution regions, so the zip carries the source with every ``### BEGIN SOLUTION`` /
``### END SOLUTION`` region *emptied*, markers kept, under ``nbgrader_source/``; ``setup.sh``
puts it where the grader looks. nbgrader replaces an empty region with the same stub as a full
one, so the cells recorded at grading are exactly the released notebook's, hidden tests added
(a test checks the release it generates is byte for byte the committed one).

Environment variables, for testing the scripts off Gradescope (Gradescope sets none of them):

``AUTOGRADER_ROOT``          where ``/autograder`` is (both scripts)
``AUTOGRADER_SKIP_APT=1``    ``setup.sh`` runs no ``apt-get`` (python3 with ``venv`` is there)
``AUTOGRADER_PYTHON``        the interpreter the venv is made from (default ``python3``)
``AUTOGRADER_TORCH_INDEX``   the index torch comes from; empty: pip's own configuration
"""

from __future__ import annotations

import io
import shlex
import zipfile
from importlib import metadata
from pathlib import Path

from autograder.config import Assignment
from autograder.errors import AutograderError
from autograder.grading import atomic
from autograder.notebook import has_notebook, notebook_file

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Where the zip carries the notebook source without solutions (see the module docstring).
NOTEBOOK_SOURCE_DIR = "nbgrader_source"
# nbgrader's default region delimiters (ClearSolutions, ClearMarkScheme); course.yml sets no others.
_REGIONS = (("BEGIN SOLUTION", "END SOLUTION"), ("BEGIN MARK SCHEME", "END MARK SCHEME"))
_SKIP = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu 22.04,
# Python 3.10). Everything goes into a virtual environment: newer images refuse a root
# `pip install` into the system Python. Off Gradescope (tests): AUTOGRADER_ROOT moves
# /autograder, AUTOGRADER_SKIP_APT=1 skips apt-get, AUTOGRADER_PYTHON picks the interpreter,
# AUTOGRADER_TORCH_INDEX picks torch's index (empty: pip's own configuration).
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
SOURCE="$ROOT/source"
VENV="$ROOT/venv"
PYTHON="${{AUTOGRADER_PYTHON:-python3}}"
TORCH_INDEX="${{AUTOGRADER_TORCH_INDEX-{torch_index}}}"
if [ -z "${{AUTOGRADER_SKIP_APT:-}}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv
fi
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --no-input --disable-pip-version-check)
"${{PIP[@]}}" --upgrade pip
# torch first, from the CPU index: Gradescope has no GPU, and a plain `torch` requirement would
# download the multi-GB CUDA build. The grader's own requirement (torch>=...) is then met.
"${{PIP[@]}}" ${{TORCH_INDEX:+--index-url "$TORCH_INDEX"}} "torch=={torch}"
# The grader and its dependencies, as pyproject.toml lists them (lower bounds).
"${{PIP[@]}}" "$SOURCE"
{notebook_lines}\
# The hidden suites are in here: where `--sandbox auto` falls back to a dedicated unprivileged
# user (no user namespaces in the container), that user must not be able to read them.
chmod go-rwx "$SOURCE"
echo "setup.sh: the grader is installed in $VENV"
"""

# The notebook stage reads nbgrader's source notebook from solutions/<assignment>/ (see above).
_NOTEBOOK_LINES = """\
# The notebook stage reads nbgrader's source notebook from solutions/; this one has its solution
# regions emptied (the zip holds no solutions).
mkdir -p "$SOURCE/{solution_dir}"
cp "$SOURCE/{shipped}" "$SOURCE/{solution_dir}/{file}"
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this per submission; AUTOGRADER_ROOT moves /autograder (for tests).
set -uo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
RESULTS="$ROOT/results/results.json"
mkdir -p "$ROOT/results"
fallback() {{  # a valid result that says what happened, for whenever the grader leaves none
    cat > "$RESULTS" <<EOF
{{"score": 0, "tests": [], "extra_data": {{"flags": ["grader error: $1"]}},
 "output": "The autograder did not finish: $2 Please tell the course staff."}}
EOF
}}
oom_kills() {{  # OOM kills so far in this container's memory cgroup (v2, else v1)
    local group events
    group="$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null)"
    for events in "/sys/fs/cgroup$group/memory.events" /sys/fs/cgroup/memory/memory.oom_control; do
        if [ -r "$events" ]; then
            awk '$1 == "oom_kill" {{ n = $2 }} END {{ print n + 0 }}' "$events"
            return
        fi
    done
    echo 0
}}
# Written first: a run killed outright (for memory, or by Gradescope's timeout) leaves this.
fallback "killed" "it was stopped before it wrote its results (most likely out of memory: \\
{memory_hint})."
kills_before="$(oom_kills)"
# The virtual environment setup.sh made: its python runs the grader and the notebook's kernel.
export PATH="$ROOT/venv/bin:$PATH"
PYTHON="$ROOT/venv/bin/python"
OUT="$(mktemp -d)"
cd "$ROOT/source"
"$PYTHON" -m autograder grade {assignment} "$ROOT/submission" --out "$OUT" --jobs 1 \\
    --sandbox auto --db "sqlite:///$OUT/gradebook.db"
status=$?
# The one submission's folder (its name is the submission folder's, made safe).
found="$(find "$OUT" -mindepth 2 -maxdepth 2 -name results.json -print -quit)"
if [ -n "$found" ]; then
    cp "$found" "$RESULTS"
elif [ "$status" = 137 ] || [ "$(oom_kills)" != "$kills_before" ]; then
    fallback "out of memory" "the grader was killed for memory (exit status $status): \\
{memory_hint}."
else
    fallback "exit status $status" "the grader failed (exit status $status)."
fi
"""

# Said wherever a run may have run out of memory: what to set in Gradescope.
MEMORY_HINT = "give it at least {memory} of memory in the assignment's Autograder Settings"


# What run_autograder needs, measured by benchmarks/gradescope_limits.py (benchmarks/
# gradescope_limits.md): the reference with its solved notebook, run_autograder in a cgroup
# with Gradescope's default limits and with larger ones. The grader's three processes (harness,
# sandboxed worker, notebook kernel) each hold torch.
NEEDED_MEMORY = "3 GB"
NEEDED_CPUS = "1.0"
MEASURED = (
    "| container limits | result | peak memory (cgroup) | wall time |\n"
    "| --- | --- | --- | --- |\n"
    "| 768 MB, 0.5 CPU (Gradescope's default) | killed for memory: 0, "
    "`grader error: out of memory` | 768 MB | 10 s |\n"
    "| 1.5 GB, 0.5 CPU | full marks (106 of 110, the written answers pending) | 1474 MB | 287 s |\n"
    "| 1.5 GB, 1 CPU | full marks | 1348 MB | 66 s |\n"
    "| 3 GB, 1 CPU | full marks | 1362 MB | 66 s |\n"
)

ZIP_README = """\
# Gradescope autograder for `{assignment}`

Upload this zip as the assignment's autograder ("Configure Autograder", Ubuntu 22.04 base
image). `setup.sh` builds the grader's virtual environment once; `run_autograder` grades each
submission with the course's hidden suites and writes `/autograder/results/results.json`.

## Autograder Settings to choose

Gradescope's defaults (768 MB of memory, half a CPU, a 10-minute timeout) are too small for this
grader: it runs three Python processes that each import torch (the harness with the hidden
suites, the sandboxed worker that runs the student's code, and the notebook's kernel). In the
assignment's **Autograder Settings** choose **{memory} of memory** and **{cpus} CPU** (1.5 GB
fits a correct submission with little to spare), and a timeout of at least **{timeout} minutes**
(the grader's own bounds: the hidden suites and the notebook, each `submission_timeout_s`).
Measured (`benchmarks/gradescope_limits.py`, the reference with its solved notebook, the limits
emulated with a cgroup):

{measured}
A run that is killed (for memory, or by the timeout) still leaves a `results.json` that says so,
with a score of 0 and the flag `grader error: out of memory` (or `killed`), so the student sees
the reason and the staff know which setting to raise.

---

"""


def write_gradescope_zip(assignment: Assignment, out: Path) -> Path:
    """Write the autograder zip for ``assignment`` to ``out`` (atomically); returns ``out``."""
    root = assignment.root
    members: dict[str, bytes] = {}
    sources = [
        root / "autograder",
        root / "course.yml",
        root / "pyproject.toml",
        root / "README.md",  # pyproject's readme: `pip install` of the source needs it
        assignment.release_dir,
        assignment.hidden_tests_dir,
    ]
    # The suites of parts course.yml does not select stay out (the release has no such files).
    unselected = {assignment.hidden_tests_dir / f"test_{p}.py" for p in assignment.unselected_parts}
    for source in sources:
        for path in _files(source):
            if path not in unselected:
                members[path.relative_to(root).as_posix()] = path.read_bytes()
    if has_notebook(assignment):
        members[shipped_notebook_path(assignment)] = notebook_without_solutions(assignment)
    # The zip's README: the settings Gradescope needs first, then the project's own README.
    members["README.md"] = zip_readme(assignment).encode() + members["README.md"]
    leaked = [name for name in members if name.startswith("solutions/")]
    if leaked:  # a layout change must never ship the reference to students' graders
        raise AutograderError(f"{out}: refusing to package solution files: {leaked[0]}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        _add(archive, "setup.sh", setup_script(assignment).encode(), executable=True)
        _add(archive, "run_autograder", run_script(assignment).encode(), executable=True)
        for name, data in sorted(members.items()):
            _add(archive, name, data)
    return atomic.write_bytes(Path(out), buffer.getvalue())


def setup_script(assignment: Assignment) -> str:
    """``setup.sh``: torch pinned to the version installed here, the rest from pyproject."""
    torch = metadata.version("torch").split("+")[0]  # "2.13.0+cpu" -> "2.13.0"
    notebook_lines = ""
    if has_notebook(assignment):
        solution_dir = assignment.solution_dir.relative_to(assignment.root).as_posix()
        notebook_lines = _NOTEBOOK_LINES.format(
            solution_dir=solution_dir,
            shipped=shipped_notebook_path(assignment),
            file=notebook_file(assignment),
        )
    return SETUP_SH.format(torch=torch, torch_index=TORCH_CPU_INDEX, notebook_lines=notebook_lines)


def zip_readme(assignment: Assignment) -> str:
    """The top of the zip's README: which Autograder Settings to choose, and why."""
    limits = assignment.limits
    timeout = min(40, -(-int(2 * limits.submission_timeout_s) // 60))  # suites + notebook
    return ZIP_README.format(
        assignment=assignment.name,
        memory=NEEDED_MEMORY,
        cpus=NEEDED_CPUS,
        timeout=timeout,
        measured=MEASURED,
    )


def run_script(assignment: Assignment) -> str:
    """``run_autograder``: grade ``/autograder/submission`` with the venv's python."""
    hint = MEMORY_HINT.format(memory=NEEDED_MEMORY)
    return RUN_AUTOGRADER.format(assignment=shlex.quote(assignment.name), memory_hint=hint)


def shipped_notebook_path(assignment: Assignment) -> str:
    """Where the zip carries the notebook source without solutions, e.g.
    ``nbgrader_source/normalizing_flows/explore.ipynb``."""
    return f"{NOTEBOOK_SOURCE_DIR}/{assignment.name}/{notebook_file(assignment)}"


def notebook_without_solutions(assignment: Assignment) -> bytes:
    """The nbgrader source notebook with the lines inside every solution (and mark scheme)
    region removed, the delimiters kept, and no outputs; hidden tests stay (the autograde
    needs them). A region left open is an error naming the notebook and the cell."""
    import nbformat

    path = assignment.solution_dir / notebook_file(assignment)
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        cell.source = _empty_regions(cell.source, f"{path}: cell {index + 1}")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return (nbformat.writes(nb) + "\n").encode("utf-8")


def _empty_regions(source: str, where: str) -> str:
    kept: list[str] = []
    open_end: str | None = None
    for line in source.split("\n"):
        if open_end is not None:
            if open_end in line:
                kept.append(line)
                open_end = None
            continue
        kept.append(line)
        open_end = next((end for begin, end in _REGIONS if begin in line), None)
    if open_end is not None:
        raise AutograderError(f"{where}: a region is not closed by '### {open_end}'")
    return "\n".join(kept)


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    return sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not _SKIP & set(p.parts) and p.suffix != ".pyc"
    )


def _add(archive: zipfile.ZipFile, name: str, data: bytes, *, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o755 if executable else 0o644) << 16
    archive.writestr(info, data)
