"""The notebook stage's Jupyter kernel, started inside the same sandbox as the worker.

nbgrader runs a notebook's hidden test cells in the same kernel as the student's cells, by
design, so the kernel is where the notebook's student code runs. :func:`sandboxed_kernel`
writes a kernel spec named ``python3`` (the name the notebooks ask for) whose command starts
``ipykernel`` through bubblewrap, and the environment that makes Jupyter find it first. The
kernel sees the folder nbgrader executes the notebook in (the student's notebook and ``flows/``)
and its connection files, nothing else: not the gradebook, not the source notebook, not the
course repository. nbclient talks to it over Unix sockets (``transport = "ipc"``) in a folder
that both see, so it needs no network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autograder.grading.sandbox.bwrap import BubblewrapBackend

KERNEL_NAME = "python3"


def sandboxed_kernel(workdir: Path, runtime: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write the kernel spec under ``runtime``; returns the environment variables to set and
    the ``KernelManager`` settings (IPC sockets and the connection file, both in ``runtime``).

    ``workdir``: where nbgrader executes the notebook (bound read-write); ``runtime``: a fresh
    folder for the spec, the connection file and the sockets (bound read-write).
    """
    backend = BubblewrapBackend()
    problem = backend.unavailable()
    if problem is not None:
        raise RuntimeError(f"no sandbox for the notebook kernel: {problem}")
    tmp = runtime / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    argv = backend.wrap(
        [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        binds=[(str(workdir), str(workdir), True), (str(runtime), str(runtime), True)],
        chdir=str(workdir),
        env={
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "MPLCONFIGDIR": str(tmp),
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "PYTHONPATH": str(workdir),
        },
    )
    spec_dir = runtime / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": "Python 3 (sandboxed)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    env = {"JUPYTER_PATH": str(runtime), "JUPYTER_RUNTIME_DIR": str(runtime)}
    manager = {
        "transport": "ipc",
        "ip": str(runtime / "ipc"),
        "connection_file": str(runtime / "connection.json"),
    }
    return env, manager
