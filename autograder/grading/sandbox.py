"""The child side of isolation: what a grading process does to itself before student code runs.

Layers, from the operating system inward:

- :func:`apply_limits`: ``setrlimit`` caps on memory (address space, or data segment when a GPU
  is in use, since CUDA reserves huge address ranges), processes, file size and core dumps;
- :func:`isolate_network`: a private network namespace (no interfaces but loopback) where the
  kernel allows it, silently skipped where it does not;
- :func:`drop_privileges`: when running as root, become ``nobody`` (the scratch folder is
  chowned to it first), so the OS itself refuses writes to the course's files;
- :func:`install_audit_hook`: a PEP 578 audit hook, which Python code cannot remove, that refuses
  (``PermissionError``) and reports what a submission must not do: read the course's files,
  write outside its scratch folder, open sockets, start processes, send signals, use ``ctypes``,
  or (while its own code is on the stack) reach frames, code objects and the garbage collector's
  object lists, through which it could find the grader's state.
"""

from __future__ import annotations

import _thread
import os
import re
import resource
import signal
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autograder.config import PACKAGE, Limits

MAX_FILE_SIZE = 256 * 1024 * 1024  # RLIMIT_FSIZE: no single file written may exceed this
CLONE_NEWNET = 0x40000000

# Audit events refused whoever raises them once the lockdown is on (the grader starts nothing).
ALWAYS_REFUSED = (
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.spawn",
    "os.link",
    "sys.addaudithook",
)
# Refused when the submission's code is on the stack (libraries use them legitimately otherwise).
INTROSPECTION = (
    "sys._getframe",
    "sys._current_frames",
    "sys._current_exceptions",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "sys.settrace",
    "sys.setprofile",
    "code.__new__",
    "function.__new__",
    "_thread.start_new_thread",
)
# Attributes that hand out frames or code objects (``object.__getattr__`` events).
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "__code__"})
# Modules that fetch frames or code objects on behalf of their caller (``inspect.stack()``,
# ``logging.currentframe()``, ``dis.dis(f)``). A request through them is judged by who asked.
PASS_THROUGH = frozenset({"inspect", "traceback", "logging", "dis", "bdb", "pdb", "marshal"})
PATH_EVENTS = {  # event -> positions of path arguments that it writes to
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
}
LISTING_EVENTS = ("os.listdir", "os.scandir")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROC_MEMORY = re.compile(r"^/proc/[^/]+/(task/[^/]+/)?(mem|environ|maps|pagemap)$")


def apply_limits(limits: Limits, *, gpu: bool = False) -> None:
    """Cap this process's memory, processes, file sizes and core dumps (inherited by children).

    On a GPU the cap goes on the data segment (``RLIMIT_DATA``: private writable memory)
    instead of the address space, which the CUDA driver reserves by the terabyte.
    """
    memory = limits.memory_mb * 1024 * 1024
    _lower(resource.RLIMIT_DATA if gpu else resource.RLIMIT_AS, memory)
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_FSIZE, MAX_FILE_SIZE)
    # Past the size cap a write fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # RLIMIT_NPROC counts every process of the user: as root (ignored anyway) or a regular user,
    # allow what the user runs already; after the drop to ``nobody`` it is the cap as given.
    already = 0 if os.geteuid() == 0 else _processes_of(os.geteuid())
    _lower(resource.RLIMIT_NPROC, already + limits.max_processes)


def _lower(kind: int, value: int) -> None:
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, hard if hard != resource.RLIM_INFINITY else value))


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                continue
    return count


def isolate_network() -> bool:
    """Move into a private network namespace (only loopback) when the kernel allows it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def drop_privileges(scratch: Path, user: str = "nobody") -> str | None:
    """As root, hand ``scratch`` to ``user`` and become it; return the user, or None if not.

    Skipped (None) when not root, or when the interpreter lives where other users cannot read it
    (e.g. under ``/root``): the unprivileged process could not import anything lazily.
    """
    # A virtual environment's prefix may be open while the standard library it links to (the
    # base prefix) is not: every place Python imports from must be open to others.
    roots = {sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)}
    if os.geteuid() != 0 or not all(_open_to_others(Path(r).resolve()) for r in roots):
        return None
    import pwd

    entry = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(scratch):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = str(scratch)
    return user


def _open_to_others(path: Path) -> bool:
    """Whether every folder from ``/`` down to ``path`` may be entered by any user."""
    return all(os.stat(folder).st_mode & 0o001 for folder in [path, *path.parents])


@dataclass(frozen=True)
class Policy:
    """Where a submission may read and write once the lockdown is on.

    ``protected``: folders it may not read or list (the course repository, the other runs'
    scratch folders); ``writable``: the only folders it may write in (its scratch folder);
    ``student``: the folder holding its code (frames from files there are the submission's).
    """

    protected: tuple[str, ...]
    writable: tuple[str, ...]
    student: str
    trusted: tuple[str, ...]  # code from files under these is the grader's or a library's

    @classmethod
    def for_run(cls, scratch: Path, protected: list[Path], grader: list[Path]) -> Policy:
        paths = sysconfig.get_paths()
        libraries = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        return cls(
            protected=tuple(_real(p) for p in protected),
            writable=(_real(scratch), "/dev/null"),
            student=_real(scratch),
            trusted=tuple(sorted({_real(p) for p in [*libraries, *grader]})),
        )


def _real(path: os.PathLike[str] | str) -> str:
    return os.path.realpath(path)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


class _Guard:
    """The decisions of the audit hook; ``check`` returns what was refused, or None."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.caller = None  # the frame that raised the event being checked
        self.getframe = sys._getframe  # bound now: the submission may rebind ``sys._getframe``

    def untrusted(self, filename: str) -> bool:
        # Code compiled from strings ("<string>", "<frozen ...>") is judged by its callers: a
        # submission's exec'd code still has the submission's frame below it.
        if filename.startswith("<"):
            return False
        return not _under(filename, self.policy.trusted)

    def stack(self) -> list[str]:
        """File names of the Python frames that raised the event, innermost first."""
        frame = self.caller
        names = []
        while frame is not None:
            names.append(frame.f_code.co_filename)
            frame = frame.f_back
        return names

    def culprit(self, stack: list[str]) -> str | None:
        for filename in stack:
            if self.untrusted(filename):
                return os.path.basename(filename)
        return None

    def check(self, event: str, args: tuple) -> str | None:
        if event == "open":
            return self.open(*args[:3])
        if event.startswith(ALWAYS_REFUSED) or event.startswith("socket."):
            return f"{event}{_show_args(args)}"
        if event in PATH_EVENTS:
            for index in PATH_EVENTS[event]:
                path = _path_arg(args[index]) if index < len(args) else None
                if path is not None and not _under(path, self.policy.writable):
                    return f"{event}({path!r})"
            return None
        if event in LISTING_EVENTS:
            path = _path_arg(args[0] if args else ".")
            hidden = path is not None and _under(path, self.policy.protected)
            if hidden and not _under(path, (self.policy.student,)) and self.culprit(self.stack()):
                return f"{event}({path!r})"
            return None
        if event.startswith("ctypes."):
            return event if self.culprit(self.stack()) else None
        if event in INTROSPECTION:
            return event if self.introspection_refused() else None
        if event == "object.__getattr__" and args[1] in FRAME_ATTRIBUTES:
            return f"reading .{args[1]}" if self.introspection_refused() else None
        if event == "object.__setattr__":
            return self.setattr(*args[:2])
        # Code compiled under a library's file name would pass for the library's code.
        named = event == "compile" and len(args) > 1 and isinstance(args[1], str)
        if named and not args[1].startswith("<") and self.direct_caller_untrusted():
            return f"compile(..., {args[1]!r})"
        return None

    def open(self, path: object, mode: object, flags: object) -> str | None:
        real = _path_arg(path)
        if real is None:  # an already open descriptor
            return None
        writes = (isinstance(flags, int) and flags & WRITE_FLAGS) or (
            isinstance(mode, str) and any(c in mode for c in "wax+")
        )
        shown = f"open({real!r}, {mode if isinstance(mode, str) else 'os.open'!r})"
        if PROC_MEMORY.match(real):
            return shown
        if writes:
            return None if _under(real, self.policy.writable) else shown
        protected = _under(real, self.policy.protected)
        if protected and not _under(real, (self.policy.student,)) and self.culprit(self.stack()):
            return shown
        return None

    def setattr(self, target: object, name: str) -> str | None:
        if not self.direct_caller_untrusted():
            return None
        owner = target if isinstance(target, type) else type(target)
        module = getattr(target, "__module__", None) or getattr(owner, "__module__", "")
        if isinstance(module, str) and module.split(".")[0] == PACKAGE:
            return None
        return f"setting {getattr(owner, '__qualname__', '?')}.{name}"

    def direct_caller_untrusted(self) -> bool:
        stack = self.stack()
        return bool(stack) and self.untrusted(stack[0])

    def introspection_refused(self) -> bool:
        """Refuse frame, code and object-graph access asked for by the submission's own code.

        Libraries use ``sys._getframe`` and ``__code__`` for their own purposes all the time
        (``typing``, ``namedtuple``, torch's signature checks) and get them; modules that hand
        frames or code back to their caller (:data:`PASS_THROUGH`) are looked through, so the
        submission asking ``inspect.stack()`` is refused like asking ``sys._getframe``.
        """
        for filename in self.stack():
            if self.untrusted(filename):
                return True
            if _module_name(filename) not in PASS_THROUGH:
                return False
        return False


def _module_name(filename: str) -> str:
    """``.../collections/__init__.py`` -> ``collections``; ``.../warnings.py`` -> ``warnings``."""
    path = Path(filename)
    return path.parent.name if path.stem == "__init__" else path.stem


def _path_arg(value: object) -> str | None:
    if isinstance(value, int) or value is None:
        return None
    try:
        raw = os.fsdecode(value)  # str, bytes or os.PathLike
    except TypeError:
        return None
    return _real(raw)


def _show_args(args: tuple) -> str:
    shown = ", ".join(repr(a)[:80] for a in args[:2])
    return f"({shown})"


def install_audit_hook(policy: Policy, report: Callable[[str], None]) -> None:
    """Refuse, from now on, what ``policy`` forbids; ``report`` each refusal (one line).

    A refusal raises ``PermissionError("the grader refused ...")`` in the code that tried.
    The hook guards against re-entry (its own frame walks raise audit events too) per thread.
    """
    guard = _Guard(policy)
    busy = _thread._local()

    def hook(event: str, args: tuple) -> None:
        if getattr(busy, "on", False):
            return
        busy.on = True
        try:
            try:
                guard.caller = guard.getframe(1)
            except ValueError:  # raised from C with no Python frame (interpreter start/exit)
                guard.caller = None
            refused = guard.check(event, args)
            if refused is None:
                return
            culprit = guard.culprit(guard.stack()) or "the grader's side"
            report(f"refused: {refused} from {culprit}")
        finally:
            guard.caller = None
            busy.on = False
        raise PermissionError(f"the grader refused {refused}")

    sys.addaudithook(hook)
