"""Re-executing the supervisor in place (``kill -USR2``), keeping its pid, listeners and child.

Use case: upgrading grace_plugins itself or the interpreter, without a pid change (systemd,
containers with the supervisor as PID 1, pidfiles all keep working).

1. **Preflight.** The new program is first run once with ``GRACE_PLUGINS_PREFLIGHT=1``: it must
   reach :func:`grace_plugins.runner.run` (the interpreter starts, the command line parses, the
   adapter imports) and exit 0 there. If it does not, nothing is exec'd: the old supervisor and
   its generation serve on. ``exec`` itself is the point of no return, so it happens only after.
2. **Exec.** The listener fds and the serving generation's channel are made inheritable and
   described in ``GRACE_PLUGINS_SUPERVISOR`` (versioned JSON, owner pid = this pid, which
   ``exec`` keeps). Stop and upgrade signals are blocked across the exec (the mask survives it),
   so none is lost or kills the new image before it installs its handlers.
3. **Adopt.** The new image validates the fds, adopts the generation (a child of this same pid,
   reaped with ``waitpid`` on its pid only) and then upgrades it to a generation of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass

from grace_plugins.errors import GraceError

SUPERVISOR_VAR = "GRACE_PLUGINS_SUPERVISOR"
PREFLIGHT_VAR = "GRACE_PLUGINS_PREFLIGHT"
FORMAT_VERSION = 1
#: Signals held pending across the exec, delivered once the new image handles them.
HELD_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}


@dataclass
class SupervisorHandoff:
    """What a re-exec'd supervisor inherits from its previous image."""

    listeners: list[tuple[str, int]]
    generation: int
    generation_pid: int
    channel_fd: int
    counter: int

    def encode(self) -> str:
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "pid": os.getpid(),
                "listeners": [[name, fd] for name, fd in self.listeners],
                "generation": self.generation,
                "generation_pid": self.generation_pid,
                "channel": self.channel_fd,
                "counter": self.counter,
            }
        )


def take_supervisor_handoff(
    environ: MutableMapping[str, str] | None = None,
) -> SupervisorHandoff | None:
    """Remove and parse the re-exec variable; ``None`` when this is not a re-exec.

    :raises GraceError: when it is malformed or was written by another process.
    """
    environ = os.environ if environ is None else environ
    raw = environ.pop(SUPERVISOR_VAR, None)
    if raw is None:
        return None
    fix = f"{SUPERVISOR_VAR} is set only by a re-executing supervisor; unset it and restart"
    try:
        data = json.loads(raw)
        if data.get("v") != FORMAT_VERSION:
            raise GraceError(f"{SUPERVISOR_VAR} has format version {data.get('v')!r}: {fix}.")
        if data.get("pid") != os.getpid():
            raise GraceError(f"{SUPERVISOR_VAR} was written by pid {data.get('pid')}: {fix}.")
        handoff = SupervisorHandoff(
            listeners=[(str(name), int(fd)) for name, fd in data["listeners"]],
            generation=int(data["generation"]),
            generation_pid=int(data["generation_pid"]),
            channel_fd=int(data["channel"]),
            counter=int(data["counter"]),
        )
    except GraceError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GraceError(f"{SUPERVISOR_VAR} is malformed ({exc!r}): {fix}.") from None
    return handoff


def preflight(argv: list[str], cwd: str, timeout: float) -> str | None:
    """Run the new program up to the grace entry point; return why it failed, or ``None``.

    Blocks up to *timeout* seconds. Its output goes to our stderr, so errors are visible.
    """
    env = {**os.environ, PREFLIGHT_VAR: "1"}
    for name in (SUPERVISOR_VAR, "GRACE_PLUGINS_HANDOFF"):
        env.pop(name, None)
    try:
        result = subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"it did not reach the grace_plugins entry point within {timeout:g} s"
    except OSError as exc:
        return f"it could not be started ({exc.strerror})"
    if result.returncode != 0:
        return f"it exited with status {result.returncode}"
    return None


def exec_supervisor(argv: list[str], handoff: SupervisorHandoff, keep_fds: list[int]) -> str:
    """Replace this process's program, keeping *keep_fds*; returns only on failure (why)."""
    env = dict(os.environ)
    env[SUPERVISOR_VAR] = handoff.encode()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        for fd in keep_fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return f"exec failed ({exc.strerror})"
    raise AssertionError("unreachable")  # pragma: no cover


def release_held_signals() -> None:
    """Unblock the signals held across the exec (called once handlers are installed)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
