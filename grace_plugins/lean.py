"""The lean supervisor: the process the user started, re-executed into a small interpreter.

By the time an adapter hands over to :func:`grace_plugins.runner.run`, the process the user
started has imported its framework (Flask's CLI, click, werkzeug) and, under ``manage.py``,
the whole project (``django.setup()`` runs before any command): tens of megabytes that the
supervisor never uses and would hold for the server's whole life. Once the listeners are
bound, the supervisor re-executes itself in place (``exec``: the pid, the listeners and the
terminal stay; stop and upgrade signals are held pending across it) into ``python [the same
interpreter flags] -c BOOT``, which imports grace_plugins' core only and supervises. What it
needs travels in ``GRACE_PLUGINS_SUPERVISOR`` (:class:`~grace_plugins.reexec.SupervisorHandoff`):
the listeners, the grace settings, the command line the generations run, and the banner.
"""

from __future__ import annotations

import os
import sys

import grace_plugins
from grace_plugins.cmdline import interpreter, interpreter_flags, working_dir
from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.reexec import SupervisorHandoff, exec_supervisor

BOOT = "import sys;sys.path.append(sys.argv[1]);from grace_plugins.lean import main;main()"


def become_lean(image: SupervisorHandoff) -> str:
    """Exec the lean supervisor, handing it *image*; returns only if it could not (why)."""
    if getattr(sys, "frozen", False):
        return "a frozen program cannot run the interpreter"
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(grace_plugins.__file__)))
    argv = [interpreter(), *interpreter_flags(), "-c", BOOT, package_parent]
    return exec_supervisor(argv, image, working_dir())


def main() -> None:
    """The lean image's entry point (``BOOT``): supervise what the previous image bound."""
    from grace_plugins.log import configure
    from grace_plugins.reexec import take_supervisor_handoff
    from grace_plugins.runner import adopt_listeners, supervise

    if sys.path and sys.path[-1] == sys.argv[1]:
        del sys.path[-1]  # the program's own sys.path, as generations get it
    configure("supervisor")
    try:
        image = take_supervisor_handoff()
        if image is None or not image.program:
            raise GraceError(
                "the lean supervisor runs only as the re-executed image of a grace_plugins"
                " server: start the server itself (flask hotrun, manage.py runhot...)."
            )
        sockets = adopt_listeners(image)
        code = supervise(image, sockets)
    except GraceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    sys.exit(code)
