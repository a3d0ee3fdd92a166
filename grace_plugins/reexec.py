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
import dataclasses
import os
import signal
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from grace_plugins import envcodec
from grace_plugins.cmdline import pinned
from grace_plugins.errors import GraceError
from grace_plugins.handoff import HANDOFF_VAR
from grace_plugins.options import DEFAULTS, Options, options_from_fields, options_to_fields
from grace_plugins.watching import Watching

SUPERVISOR_VAR = "GRACE_PLUGINS_SUPERVISOR"
PREFLIGHT_VAR = "GRACE_PLUGINS_PREFLIGHT"
FORMAT_VERSION = 2
#: Version 1 (before the lean image) had no program, options or banner.
READABLE_VERSIONS = (1, 2)
#: Signals held pending across the exec, delivered once the new image handles them.
HELD_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
_FIX = f"{SUPERVISOR_VAR} is set only by a re-executing supervisor; unset it and restart"


@dataclass
class SupervisorHandoff:
    """What the next image of a supervisor (same pid, after ``exec``) inherits: the listeners,
    the generation it adopts (``generation`` 0: none), and, for the lean image
    (:mod:`grace_plugins.lean`), the program its generations run, ``len(sys.argv)`` of that
    program, the grace settings and the banner to print once the first generation serves."""

    listeners: list[tuple[str, int]]
    generation: int = 0
    generation_pid: int = 0
    channel_fd: int = -1
    counter: int = 0
    program: list[str] = field(default_factory=list)
    argv_len: int = 0
    options: Options = DEFAULTS
    banner: str = ""
    #: The file watcher's settings when the reloader is on (``None``: no watcher).
    watching: Watching | None = None
    #: Variables set in each generation's environment, never in the supervisor's (see
    #: :func:`grace_plugins.runner.run`).
    generation_env: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        return envcodec.encode(
            FORMAT_VERSION,
            {
                "pid": os.getpid(),
                "listeners": [[name, fd] for name, fd in self.listeners],
                "generation": self.generation,
                "generation_pid": self.generation_pid,
                "channel": self.channel_fd,
                "counter": self.counter,
                "program": self.program,
                "argv_len": self.argv_len,
                "options": options_to_fields(self.options),
                "banner": self.banner,
                "watching": None if self.watching is None else dataclasses.asdict(self.watching),
                "generation_env": self.generation_env,
            },
        )

    def fds(self) -> list[int]:
        """The fds the next image must inherit."""
        return [fd for _, fd in self.listeners] + ([self.channel_fd] if self.generation else [])


def take_supervisor_handoff(
    environ: MutableMapping[str, str] | None = None,
) -> SupervisorHandoff | None:
    """Remove and parse the re-exec variable; ``None`` when this is not a re-exec.

    :raises GraceError: when it is malformed or was written by another process.
    """
    environ = os.environ if environ is None else environ
    data = envcodec.take(environ, SUPERVISOR_VAR, READABLE_VERSIONS, _FIX)
    if data is None:
        return None
    if data.get("pid") != os.getpid():
        raise GraceError(f"{SUPERVISOR_VAR} was written by pid {data.get('pid')}: {_FIX}.")
    try:
        return SupervisorHandoff(
            listeners=[(str(name), int(fd)) for name, fd in data["listeners"]],
            generation=int(data["generation"]),
            generation_pid=int(data["generation_pid"]),
            channel_fd=int(data["channel"]),
            counter=int(data["counter"]),
            program=[str(arg) for arg in data.get("program", [])],
            argv_len=int(data.get("argv_len", 0)),
            options=options_from_fields(data.get("options", {})),
            banner=str(data.get("banner", "")),
            watching=None if not data.get("watching") else Watching(**data["watching"]),
            generation_env={
                str(name): str(value) for name, value in data.get("generation_env", {}).items()
            },
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GraceError(f"{SUPERVISOR_VAR} is malformed ({exc!r}): {_FIX}.") from None


def start_preflight(argv: list[str], cwd: str) -> subprocess.Popen[bytes]:
    """Start the new program once, to run up to the grace entry point and exit 0 there. Does
    not block: the caller watches the process like a generation. Its output goes to our
    stderr, so errors are visible.

    :raises OSError: when it cannot be started.
    """
    env = {**os.environ, "PWD": cwd, PREFLIGHT_VAR: "1"}
    for name in (SUPERVISOR_VAR, HANDOFF_VAR):
        env.pop(name, None)
    argv, here = pinned(argv, cwd)  # the program the exec will run
    return subprocess.Popen(
        argv, cwd=here, env=env, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True
    )


def preflight_failure(returncode: int) -> str | None:
    """Why a finished preflight run failed (``None``: it passed)."""
    if returncode == 0:
        return None
    if returncode < 0:
        return f"it was killed by signal {-returncode}"
    return f"it exited with status {returncode}"


def exec_supervisor(
    argv: list[str], handoff: SupervisorHandoff, cwd: str, wake_fd: int = -1
) -> str:
    """Replace this process's program with *argv* run in *cwd*, handing it *handoff* (its
    fds inherited); returns only on failure (why).

    An exec keeps the working directory the process entered, so *cwd* is entered again first
    (a ``current`` symlink switched to a new release since is followed, as gunicorn's USR2).

    Stop and upgrade signals are blocked across the exec (the mask survives it); those that
    already reached the loop's wakeup pipe (*wake_fd*) but were not read yet are raised again,
    so they are pending in the new image instead of lost with the pipe.
    """
    env = {**os.environ, "PWD": cwd, SUPERVISOR_VAR: handoff.encode()}
    keep_fds = handoff.fds()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    with contextlib.suppress(BlockingIOError, OSError):
        for signum in set(os.read(wake_fd, 4096) if wake_fd >= 0 else b"").intersection(
            HELD_SIGNALS
        ):
            os.kill(os.getpid(), signum)
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    here = _where_we_are()
    argv, release = pinned(argv, cwd)  # the new image stays in the release it starts in
    try:
        os.chdir(release)
        os.execve(argv[0], argv, env)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.fchdir(here)
        for fd in keep_fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return f"exec failed ({exc.strerror})"
    finally:
        if here >= 0:
            os.close(here)
    raise AssertionError("unreachable")  # pragma: no cover


def _where_we_are() -> int:
    """An fd of the working directory, to come back to if the exec fails (-1 when it cannot
    be opened: a directory we may enter but not read, without Linux's ``O_PATH``)."""
    flags = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)
    try:
        return os.open(".", flags)
    except OSError:
        return -1


def release_held_signals() -> None:
    """Unblock the signals held across the exec (called once handlers are installed)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
