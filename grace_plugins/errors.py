"""Errors and exit codes shared by the supervisor, the generations and the adapters.

Every error a user can cause (a malformed inherited fd, a port in use, an app that does not
import) is a :class:`GraceError` whose message is one line naming the problem and the fix, so
that entry points can print it without a traceback.
"""

from __future__ import annotations

import enum
import os
import sys


class GraceError(Exception):
    """A problem the user can fix; ``str(error)`` is a one-line explanation."""


class ExitCode(enum.IntEnum):
    """Process exit statuses with a meaning of their own."""

    OK = 0
    #: The command line or an inherited value was wrong (like ``EX_USAGE``).
    USAGE = 2
    #: The app could not be imported or failed before it was ready (as gunicorn's 4).
    APP_LOAD_ERROR = 4
    #: The platform has no POSIX signals and fd passing.
    UNSUPPORTED_PLATFORM = 69


def require_posix() -> None:
    """Raise :class:`GraceError` on platforms without POSIX signals and fd inheritance.

    :raises GraceError: on Windows and other non-POSIX systems.
    """
    if os.name != "posix":
        raise GraceError(
            f"grace_plugins needs POSIX signals and file descriptor passing (Linux or macOS);"
            f" this platform is {sys.platform!r}. Use the framework's own server here."
        )
