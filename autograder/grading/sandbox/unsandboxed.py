"""``--sandbox none``: the worker as a plain child process, on the operator's explicit request.

It keeps the process split (the harness still never runs student code), the resource limits and
the new session, but the OS does not stop the worker from reading or writing what the grader's
user can. Every result is flagged ``no-sandbox``.
"""

from __future__ import annotations

import os
import subprocess

from autograder.grading.sandbox.base import Backend, WorkerSpec
from autograder.grading.sandbox.limits import preexec


class NoSandbox(Backend):
    name = "none"
    flags = ("no-sandbox",)

    def unavailable(self) -> str | None:
        return None

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        env = {
            "HOME": str(spec.scratch),
            "TMPDIR": str(spec.scratch / "tmp"),
            "MPLCONFIGDIR": str(spec.scratch / "tmp"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AUTOGRADER_SANDBOX": self.name,
            **spec.env,
        }
        return subprocess.Popen(
            self.worker_argv(spec, str(spec.runtime), str(spec.submission)),
            cwd=spec.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=spec.log,
            stderr=spec.log,
            pass_fds=(spec.requests, spec.replies),
            start_new_session=True,
            preexec_fn=preexec(spec.limits, gpu=spec.gpu),
        )
