"""OS sandboxes for the worker, the one process that runs student code.

Backends, strongest first (``autograder grade --sandbox NAME``):

- ``bwrap`` (:mod:`.bwrap`): bubblewrap; new user, PID, network, IPC, UTS and mount namespaces,
  uid/gid 65534, the Python install read-only, one private writable folder, nothing else;
- ``user`` (:mod:`.unprivileged`): a dedicated unprivileged user per job slot, for hosts that
  refuse user namespaces (needs root; the course files must be unreadable to that user);
- ``none`` (:mod:`.unsandboxed`): a plain child process with resource limits only; every result
  carries the flag ``no-sandbox``. Only on the operator's explicit request.

``auto`` takes the first that works here, and refuses (one line naming the fix) when neither
``bwrap`` nor ``user`` does: grading untrusted code without a sandbox is never a default.
Every backend applies :mod:`.limits` (address space, processes, file size, CPU time, core dumps),
puts each worker in a cgroup of its own (:mod:`.cgroup`: memory of its whole process tree, a CPU
quota, processes) and its scratch folder on a capped tmpfs (:mod:`.space`), gives it capped
``/tmp`` and ``/dev/shm`` of its own, and puts it in its own session so that it can be killed as
a whole. Where the host refuses a cgroup or a mount, the rlimits remain and every result says
what is not enforced.
"""

from __future__ import annotations

from autograder.errors import AutograderError
from autograder.grading.sandbox.base import Backend, WorkerSpec
from autograder.grading.sandbox.bwrap import BubblewrapBackend
from autograder.grading.sandbox.unprivileged import BASE_UID, UserBackend
from autograder.grading.sandbox.unsandboxed import NoSandbox

NAMES = ("auto", "bwrap", "user", "none")
__all__ = ["BASE_UID", "NAMES", "Backend", "UserBackend", "WorkerSpec", "choose"]


def choose(name: str = "auto") -> Backend:
    """The backend called ``name`` (or the best that works here, for ``auto``)."""
    if name == "none":
        return NoSandbox()
    candidates: list[Backend] = []
    if name in ("auto", "bwrap"):
        candidates.append(BubblewrapBackend())
    if name in ("auto", "user"):
        candidates.append(UserBackend())
    if not candidates:
        raise AutograderError(f"unknown sandbox {name!r} (choose from {', '.join(NAMES)})")
    reasons = []
    for backend in candidates:
        problem = backend.unavailable()
        if problem is None:
            return backend
        reasons.append(f"{backend.name}: {problem}")
    raise AutograderError(
        "no OS sandbox for student code on this host ("
        + "; ".join(reasons)
        + "). Fix: allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1"
        " / user.max_user_namespaces > 0) or run the grader as root; or pass --sandbox none to"
        " grade without one (every result is flagged no-sandbox)"
    )
