"""``--sandbox none``: the worker as a plain child process, on the operator's explicit request.

It keeps the process split (the harness still never runs student code), the resource limits and
the new session, but the OS does not stop the worker from reading or writing what the grader's
user can. Every result is flagged ``no-sandbox``.
"""

from __future__ import annotations

import subprocess

from autograder.grading.sandbox.base import Backend, WorkerSpec


class NoSandbox(Backend):
    name = "none"
    flags = ("no-sandbox",)

    def unavailable(self) -> str | None:
        return None

    def start(self, spec: WorkerSpec) -> subprocess.Popen:
        return self.start_directly(spec)
