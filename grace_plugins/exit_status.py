"""How a generation leaves: the exit status that says why, and an exit that waits for nothing.

A generation that fails before it is ready exits with the status the program would have had, so
that a failed first start exits as the framework does (the supervisor passes it on); one that
fails after crashes with 1. Either way the reason is said once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import traceback
from typing import NoReturn

from grace_plugins.errors import ExitCode, GraceError


def exit_now(code: int) -> NoReturn:
    """Run the app's atexit hooks and leave, without waiting for threads the app left behind
    (a non-daemon thread would otherwise keep a drained generation alive)."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def failure_status(exc: BaseException, ready: bool, generation: int, logger: logging.Logger) -> int:
    """Say why ``serve`` failed (once) and return the exit status. Before ready it is the
    status the program would have had (a framework's own: 2 for a usage error, 1 for a failed
    check or an exception, N for ``sys.exit(N)``), so that a failed first start exits as the
    framework does; our own reasons (the ready check) exit :data:`ExitCode.APP_LOAD_ERROR`."""
    if ready:
        if not isinstance(exc, (SystemExit, GraceError)):
            traceback.print_exc()
        logger.error("generation %d crashed: %s", generation, describe(exc))
        return 1
    if isinstance(exc, GraceError):  # our own one-line reason (e.g. the ready check's)
        logger.error("generation %d failed before it was ready: %s", generation, exc)
        return ExitCode.APP_LOAD_ERROR
    if isinstance(exc, SystemExit):
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)  # what Python prints for sys.exit("message")
        return exc.code if isinstance(exc.code, int) and exc.code > 0 else 1
    traceback.print_exc()
    return 1


def describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        code = int(exc.code) if isinstance(exc.code, int) else exc.code
        return f"it called sys.exit({code!r})"
    if isinstance(exc, GraceError):  # our own one-line message
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip()
