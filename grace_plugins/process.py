"""The narrow seam between the supervisor and the operating system's processes.

Everything the supervisor does to a process goes through :class:`Spawner`, so its state machine
can be driven by tests, and so the traps live in one place:

* the next generation re-runs exactly the program the user started (``sys.orig_argv``: console
  scripts, ``python -m``, ``python -c`` and interpreter flags), with a script path made absolute;
* it inherits only the fds named in ``pass_fds`` (``close_fds=True``), never the supervisor's
  log files or database connections;
* SIGHUP is blocked while it starts (the mask survives ``exec``): a HUP that arrives while the
  new generation imports the app stays pending until the generation has installed its handler,
  instead of killing it with the default action;
* it runs in a session of its own, so a terminal's Ctrl-C or hang-up reaches only the
  supervisor, which then decides (drain, or one upgrade) for every generation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence


def program_argv() -> list[str]:
    """Return the command line that re-runs this program (interpreter flags included)."""
    orig = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    args = orig[1:]
    # sys.argv is the tail of sys.orig_argv; its first item is the script, "-c" or the module.
    script_index = len(args) - len(sys.argv)
    if 0 <= script_index < len(args):
        before = args[script_index - 1] if script_index > 0 else ""
        candidate = args[script_index]
        if (
            before not in ("-m", "-c")
            and candidate not in ("-c", "-m")
            and os.path.exists(candidate)
        ):
            args[script_index] = os.path.abspath(candidate)
    return [sys.executable, *args]


class Spawner:
    """Starts and signals generation processes (replace it in tests)."""

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        pass_fds: Sequence[int],
        cwd: str,
    ) -> subprocess.Popen[bytes]:
        """Start *argv* with exactly *pass_fds* inherited; SIGHUP blocked until it is ready
        for it. Does not block on the child. Raises ``OSError`` if it cannot start."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            return subprocess.Popen(
                list(argv),
                env=dict(env),
                pass_fds=tuple(pass_fds),
                close_fds=True,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def signal_group(self, process: subprocess.Popen[bytes], signum: int) -> None:
        """Send *signum* to the process group a generation leads (its forked helpers too)."""
        if process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


def reap_orphans(own_pids: set[int]) -> int:
    """As PID 1 (a container without an init), reap exited orphans re-parented to us.

    Peeks with ``waitid(WNOWAIT)`` so that a generation's status is never stolen from its
    ``Popen`` (which reaps it by its pid); stops at the first generation found. Returns how many
    orphans were reaped. Does nothing unless this process is PID 1.
    """
    if os.getpid() != 1 or not hasattr(os, "waitid") or not hasattr(os, "WNOWAIT"):
        return 0
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in own_pids:
            return reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
        reaped += 1


def pid_alive(pid: int) -> bool:
    """Whether *pid* exists (a zombie not yet reaped counts as alive; so does a process of
    another user, which we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
