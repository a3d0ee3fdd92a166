"""A generation forked from the warm-start template: what it must not keep of the template's
process (fds, signal handlers as they were after the preload, random states), how it becomes
the process a cold start would have been (:func:`become`), and how it then runs the user's
command line in-process, as ``python script`` or ``python -m`` would."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import runpy
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grace_plugins.cmdline import Program, program_path0


def place_fds(received: list[int], targets: list[int]) -> None:
    """Put *received* at the numbers *targets* (inheritable, as ``pass_fds`` makes them) and
    close every other fd but 0-2: the template's files are not the generation's."""
    top = max([*received, *targets, 2]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in received]
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, max(high) + 1))
    for fd in open_fds:
        if fd > 2 and fd not in high:
            with contextlib.suppress(OSError):
                os.close(fd)
    for source, target in zip(high, targets, strict=True):
        os.dup2(source, target, inheritable=True)
        os.close(source)


def run_program(program: Program) -> None:
    """Run the user's program as the interpreter would have (``sys.argv``, ``__main__``)."""
    if program.kind == "script":
        sys.argv = [program.target, *program.args]
        runpy.run_path(program.target, run_name="__main__")
        return
    main = sys.modules["__main__"]
    for key in [k for k in vars(main) if k != "__builtins__"]:
        delattr(main, key)
    sys.argv = ["-m", *program.args]
    runpy._run_module_as_main(program.target, alter_argv=True)  # type: ignore[attr-defined]


def dispositions() -> dict[int, Any]:
    """Every signal's handler now (after the preload: a library's handler is the generation's,
    as it is in a cold start)."""
    found: dict[int, Any] = {}
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(sig)
            if handler is not None:
                found[sig] = handler
    return found


def generators() -> list[weakref.ref[Any]]:
    """The preloaded ``random.Random`` instances (a fork copies their state). By type only: an
    ``isinstance`` may run a lazy object's code (Django's settings)."""
    module = sys.modules.get("random")
    if module is None:
        return []
    kinds = (module.Random,)
    return [
        weakref.ref(one)
        for one in gc.get_objects()
        if issubclass(type(one), kinds) and not issubclass(type(one), module.SystemRandom)
    ]


@dataclass
class Inherited:
    """What a generation forked from the template has to set right: the signal handlers a
    cold start would have, the template's socket, the random generators to reseed, the
    program to run."""

    dispositions: dict[int, Any]
    template_sock: socket.socket
    generators: list[weakref.ref[Any]]
    program: Program


#: Why a generation forked from the template leaves at once.
SWITCHED = (
    "[grace_plugins] the working directory leads to {} now, not to {} where the warm-start"
    " template imported from: this generation leaves, to start again cold"
)


def _where(path: str) -> str:
    """Where *path* leads ("": nowhere, a directory deleted since)."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return ""


def become(
    request: dict[str, Any], fds: list[int], middle: int, inherited: Inherited
) -> Callable[[], None]:
    """In the generation, just forked (*middle*: the process between it and the template):
    reset what the fork copied, place the generation's fds, take its environment and working
    directory, wait (at most 2 s) until it is re-parented to the supervisor, then hand back
    the program to run."""
    os.setsid()
    for sig, handler in inherited.dispositions.items():
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGHUP})  # as a spawned generation
    inherited.template_sock.close()
    place_fds(fds, [int(t) for t in request["fds"]])
    os.environ.clear()
    os.environ.update(request["env"])
    release = _where(".")  # the template's, where it imported from
    os.chdir(request["cwd"])
    landed = _where(".")
    if landed != release:  # a deploy switched the symlink since the fork was asked for
        with contextlib.suppress(OSError):
            os.write(2, SWITCHED.format(landed, release).encode() + b"\n")
        os._exit(1)  # a warm start that fails: the supervisor starts it again cold
    for ref in inherited.generators:  # random's own; a library's: each generation its own
        with contextlib.suppress(Exception):
            ref().seed()  # type: ignore[union-attr]
    sys.orig_argv = [str(a) for a in request["argv"]]
    program = inherited.program
    if not getattr(sys.flags, "safe_path", False) and sys.path:
        sys.path[0] = program_path0(program, request["cwd"])
    deadline = time.monotonic() + 2.0  # the middle process exits meanwhile: waits last
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.0005)  # until re-parented to the supervisor (handoff checks getppid)
    return lambda: run_program(program)
