"""``autograder gradescope``: this grader packaged as a Gradescope autograder zip.

Gradescope unpacks the zip into ``/autograder/source``, runs ``setup.sh`` once to build the
image, then ``run_autograder`` per submission with the student's upload in
``/autograder/submission``; the result goes to ``/autograder/results/results.json``.
``run_autograder`` grades the upload with ``python3 -m autograder grade`` (same pipeline, same
isolation as on a staff machine) and copies the submission's ``results.json`` there. The root
``/autograder`` can be moved with the environment variable ``AUTOGRADER_ROOT`` (for tests).

The zip holds the grader, ``course.yml``, the release's given files and the hidden suites;
never ``solutions/``.
"""

from __future__ import annotations

import io
import zipfile
from importlib import metadata
from pathlib import Path

from autograder.config import Assignment
from autograder.errors import AutograderError
from autograder.grading import atomic

# The grader's runtime dependencies, pinned to the versions it is tested with here.
PINNED = (
    "numpy",
    "matplotlib",
    "pytest",
    "pyyaml",
    "tqdm",
    "nbgrader",
    "nbformat",
    "nbclient",
    "markdown",
)
_SKIP = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
cd /autograder/source
apt-get update && apt-get install -y --no-install-recommends python3 python3-pip
# Gradescope's hosts have no GPU: the CPU wheel of torch is a fraction of the CUDA one's size.
pip3 install --index-url https://download.pytorch.org/whl/cpu torch=={torch}
pip3 install {pinned}
# The grader itself, without re-resolving its (already pinned) dependencies.
pip3 install --no-deps .
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this per submission; AUTOGRADER_ROOT moves /autograder (for tests).
set -uo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
OUT="$(mktemp -d)"
mkdir -p "$ROOT/results"
cd "$ROOT/source"
python3 -m autograder grade {assignment} "$ROOT/submission" --out "$OUT" --jobs 1
status=$?
if [ -f "$OUT/submission/results.json" ]; then
    cp "$OUT/submission/results.json" "$ROOT/results/results.json"
else
    # The grader itself failed: still hand Gradescope a valid result that says so.
    python3 - "$ROOT/results/results.json" "$status" <<'EOF'
import json, sys
message = f"The autograder failed (exit status {{sys.argv[2]}}); please tell the course staff."
result = {{"score": 0, "output": message, "tests": [], "extra_data": {{"flags": ["grader error"]}}}}
with open(sys.argv[1], "w") as handle:
    json.dump(result, handle)
EOF
fi
"""


def write_gradescope_zip(assignment: Assignment, out: Path) -> Path:
    """Write the autograder zip for ``assignment`` to ``out`` (atomically); returns ``out``."""
    root = assignment.root
    members: dict[str, bytes] = {}
    sources = [
        root / "autograder",
        root / "course.yml",
        root / "pyproject.toml",
        root / "README.md",
        assignment.release_dir,
        assignment.hidden_tests_dir,
    ]
    for source in sources:
        for path in _files(source):
            members[path.relative_to(root).as_posix()] = path.read_bytes()
    leaked = [name for name in members if name.startswith("solutions/")]
    if leaked:  # a layout change must never ship the reference to students' graders
        raise AutograderError(f"{out}: refusing to package solution files: {leaked[0]}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        _add(archive, "setup.sh", setup_script().encode(), executable=True)
        _add(
            archive,
            "run_autograder",
            RUN_AUTOGRADER.format(assignment=assignment.name).encode(),
            executable=True,
        )
        for name, data in sorted(members.items()):
            _add(archive, name, data)
    return atomic.write_bytes(Path(out), buffer.getvalue())


def setup_script() -> str:
    """``setup.sh`` with torch and the grader's dependencies pinned to the installed versions."""
    torch = metadata.version("torch").split("+")[0]  # "2.13.0+cpu" -> "2.13.0"
    pinned = " ".join(f"{name}=={metadata.version(name)}" for name in PINNED)
    return SETUP_SH.format(torch=torch, pinned=pinned)


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
