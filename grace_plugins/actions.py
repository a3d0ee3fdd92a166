"""What the supervisor's rules (:mod:`grace_plugins.rules`) can decide, and what they hear.

Events go in, actions come out; both are plain data, so the rules are tested without a
process and the loop (:mod:`grace_plugins.supervisor`) is the only code with effects. Every
event carries ``now`` (``time.monotonic()`` in the loop, a fake clock in tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from grace_plugins.watchspec import WatchSpec

# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    """The loop is ready: start the first generation (or upgrade the adopted one)."""

    now: float


@dataclass(frozen=True)
class SignalEvent:
    """A signal reached the supervisor (HUP, TERM, INT, USR2)."""

    now: float
    signum: int


@dataclass(frozen=True)
class UpgradeAsked:
    """A generation asked for an upgrade over its channel (a HUP reached it, a file changed)."""

    now: float
    number: int


@dataclass(frozen=True)
class Ready:
    """A generation said ``ready`` over its channel."""

    now: float
    number: int


@dataclass(frozen=True)
class ConnectionsLeft:
    """A draining generation said ``left N``: it still holds *count* connections."""

    now: float
    number: int
    count: int


@dataclass(frozen=True)
class StoppedAccepting:
    """A draining generation said ``stopped``: it no longer accepts connections."""

    now: float
    number: int


@dataclass(frozen=True)
class WatchReport:
    """A generation said what the file watcher should watch (what it loaded, or what it
    tried before it failed); *problem* when its line could not be read."""

    now: float
    number: int
    spec: WatchSpec | None
    problem: str = ""


@dataclass(frozen=True)
class FilesChanged:
    """The file watcher heard a save (*paths*), the first of its events at *first*
    (``time.monotonic()``)."""

    now: float
    paths: tuple[str, ...]
    first: float


@dataclass(frozen=True)
class ChannelClosed:
    """A generation's channel reached end of file (it is exiting, or closed it)."""

    now: float
    number: int


@dataclass(frozen=True)
class Exited:
    """A generation's process exited (``returncode`` as ``Popen``: negative for a signal)."""

    now: float
    number: int
    returncode: int


@dataclass(frozen=True)
class Spawned:
    """The :class:`Spawn` asked for succeeded: *warm* when forked from the warm-start
    template, else started cold (exec)."""

    now: float
    number: int
    pid: int
    warm: bool = False


@dataclass(frozen=True)
class SpawnFailed:
    """The :class:`Spawn` asked for failed (``OSError`` text)."""

    now: float
    number: int
    error: str


@dataclass(frozen=True)
class PreflightDone:
    """The :class:`Preflight` run of the new program ended: *why* it failed, or ``None``."""

    now: float
    why: str | None


@dataclass(frozen=True)
class ReexecRefused:
    """The :class:`Reexec` asked for did not happen (``exec`` failed)."""

    now: float
    why: str


@dataclass(frozen=True)
class Tick:
    """Time passed: check the deadlines."""

    now: float


Event = (
    Begin
    | SignalEvent
    | UpgradeAsked
    | Ready
    | ConnectionsLeft
    | StoppedAccepting
    | WatchReport
    | FilesChanged
    | ChannelClosed
    | Exited
    | Spawned
    | SpawnFailed
    | PreflightDone
    | ReexecRefused
    | Tick
)

# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start generation *number* (warm when the spawner can, unless *cold*); the outcome,
    :class:`Spawned` or :class:`SpawnFailed`, comes back as an event."""

    number: int
    cold: bool = False


@dataclass(frozen=True)
class Drain:
    """Tell a generation to drain (over its channel; SIGTERM to its group if that is gone).
    Sent again to a draining generation, it means: your deadline is now."""

    number: int


@dataclass(frozen=True)
class Kill:
    """SIGKILL the generation's process group; with *wait*, reap it (bounded) before going on."""

    number: int
    wait: bool = False


@dataclass(frozen=True)
class Forget:
    """The generation is gone: stop watching and close its channel."""

    number: int


@dataclass(frozen=True)
class Unwatch:
    """Stop watching the generation's channel (end of file); its exit comes later."""

    number: int


@dataclass(frozen=True)
class Log:
    """One log line: ``logger.log(level, fmt, *args)``."""

    level: int
    fmt: str
    args: tuple[Any, ...] = ()

    def text(self) -> str:
        return self.fmt % self.args if self.args else self.fmt


def info(fmt: str, *args: Any) -> Log:
    return Log(logging.INFO, fmt, args)


def error(fmt: str, *args: Any) -> Log:
    return Log(logging.ERROR, fmt, args)


def warning(fmt: str, *args: Any) -> Log:
    return Log(logging.WARNING, fmt, args)


@dataclass(frozen=True)
class Notify:
    """A systemd message other than ``READY=1``: ``reloading`` or ``stopping``."""

    kind: str
    status: str = ""


@dataclass(frozen=True)
class Serving:
    """``READY=1`` to systemd, *then* the upgrade's outcome (if any) in the state file, then
    the serving generation: ``grace-plugins reload`` returns once the outcome is recorded,
    and systemd must not see the reload end before ``READY=1``."""

    status: str
    outcome: str | None = None
    detail: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    number: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Record:
    """Merge these fields into the state file."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Draining:
    """One draining generation as the state file shows it (``deadline`` is monotonic;
    ``left``: the connections it last said it holds, ``None`` if it never said)."""

    number: int
    pid: int
    deadline: float
    cut: bool
    left: int | None = None


@dataclass(frozen=True)
class RecordDraining:
    """The draining generations changed: record them for ``grace-plugins status``."""

    generations: tuple[Draining, ...]


@dataclass(frozen=True)
class Watch:
    """Make *spec* what the file watcher watches (*what*: whose files, for the log)."""

    spec: WatchSpec
    what: str = ""


@dataclass(frozen=True)
class Refresh:
    """A generation became current: the warm starter may rebuild its template from the
    modules that generation reported."""


@dataclass(frozen=True)
class DropTemplate:
    """The warm-start template was at fault (a generation forked from it failed, the same
    code started cold did not): stop it; the next report builds a new one."""

    why: str


@dataclass(frozen=True)
class Preflight:
    """Start the new program once, in the background, to check that it reaches our entry
    point (USR2); the outcome comes back as :class:`PreflightDone`."""


@dataclass(frozen=True)
class StopPreflight:
    """Kill the preflight run (stopping, or past its deadline)."""


@dataclass(frozen=True)
class Reexec:
    """Exec the new program in place (after a good preflight), handing it generation
    *number* (*pid*) and the generation *counter*; answer :class:`ReexecRefused` if ``exec``
    fails (it never returns otherwise)."""

    number: int
    pid: int
    counter: int


Action = (
    Spawn
    | Drain
    | Kill
    | Forget
    | Unwatch
    | Log
    | Notify
    | Serving
    | Record
    | RecordDraining
    | Watch
    | Refresh
    | DropTemplate
    | Preflight
    | StopPreflight
    | Reexec
)
