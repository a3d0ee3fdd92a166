"""The environment variables that hand listeners from one process to the next.

Two sources exist:

* our own variable, ``GRACE_PLUGINS_HANDOFF``, written by the supervisor for each generation:
  a small versioned JSON object naming every fd (``{"v": 1, "supervisor": pid, ...}``). A
  supervisor and a generation may run different grace_plugins versions after a ``pip install``,
  so the format carries a version and only what a generation needs;
* systemd socket activation: ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES``, fds from 3.

Both are removed from :data:`os.environ` as soon as they are read (so that subprocesses the app
starts never see them) and validated before use: a malformed or half-missing value is a
:class:`~grace_plugins.errors.GraceError` with a one-line message, never a ``KeyError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from grace_plugins import envcodec
from grace_plugins import listeners as lst
from grace_plugins.errors import GraceError
from grace_plugins.options import (
    DEFAULTS,
    InvalidValue,
    Options,
    options_from_fields,
    options_to_fields,
)

HANDOFF_VAR = "GRACE_PLUGINS_HANDOFF"
FORMAT_VERSION = 2
#: Version 1 carried three settings at the top level; a newer generation still reads it.
READABLE_VERSIONS = (1, 2)
SYSTEMD_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
SD_LISTEN_FDS_START = 3
_FIX = (
    "it is set only by a grace_plugins supervisor for its generations; unset it and start the"
    " server again"
)


@dataclass
class Handoff:
    """What a generation receives from its supervisor: the fds, and every grace setting as
    the supervisor parsed it (a generation never reads them from its command line)."""

    supervisor_pid: int
    generation: int
    #: (listener name, fd) pairs.
    listeners: list[tuple[str, int]]
    #: The private channel to the supervisor (readiness, upgrade requests, drain orders).
    channel_fd: int
    options: Options = DEFAULTS

    def encode(self) -> str:
        """Return the variable's value."""
        return envcodec.encode(
            FORMAT_VERSION,
            {
                "supervisor": self.supervisor_pid,
                "generation": self.generation,
                "listeners": [[name, fd] for name, fd in self.listeners],
                "channel": self.channel_fd,
                "options": options_to_fields(self.options),
            },
        )


def _bad(problem: str) -> GraceError:
    return GraceError(f"{HANDOFF_VAR} {problem}: {_FIX}.")


def _fd(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"has an invalid {what} fd {value!r}")
    return value


def _options(data: dict[str, Any]) -> Options:
    """The settings the supervisor sent (version 1: three of them at the top level)."""
    sent = data.get("options") if data.get("v") != 1 else data
    if not isinstance(sent, dict):
        raise _bad("has no options object")
    try:
        return options_from_fields(sent)
    except InvalidValue as exc:
        raise _bad(f"has an {exc}") from None


def take_handoff(environ: MutableMapping[str, str] | None = None) -> Handoff | None:
    """Remove our handoff variable from *environ* and return it parsed, or ``None`` if unset.

    Does not touch the fds: :func:`grace_plugins.listeners.adopt` validates them.

    :raises GraceError: when the value is malformed, of another format version, or addressed
        to a process whose parent is not the supervisor that wrote it.
    """
    environ = os.environ if environ is None else environ
    data = envcodec.take(environ, HANDOFF_VAR, READABLE_VERSIONS, _FIX)
    if data is None:
        return None
    supervisor = data.get("supervisor")
    if not isinstance(supervisor, int) or supervisor <= 0:
        raise _bad(f"has an invalid supervisor pid {supervisor!r}")
    if supervisor != os.getppid():
        raise _bad(
            f"names supervisor pid {supervisor} but this process's parent is {os.getppid()}"
            " (pid mismatch)"
        )
    listeners = data.get("listeners")
    if not isinstance(listeners, list) or not listeners:
        raise _bad("has no listeners")
    pairs: list[tuple[str, int]] = []
    for item in listeners:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise _bad(f"has a malformed listener entry {item!r}")
        pairs.append((item[0], _fd(item[1], "listener")))
    generation = data.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise _bad(f"has an invalid generation number {generation!r}")
    channel = _fd(data.get("channel"), "channel")
    return Handoff(supervisor, generation, pairs, channel, _options(data))


#: What to do about malformed socket-activation variables.
_SYSTEMD_FIX = "unset LISTEN_FDS/LISTEN_PID or start the server directly from its socket unit"


def _fd_count(text: str) -> int:
    """``LISTEN_FDS``'s count. :raises GraceError: one line, if it is not one."""
    try:
        count = int(text)
        if count < 0:
            raise ValueError
    except ValueError:
        raise GraceError(f"LISTEN_FDS={text!r} is not a count of fds: {_SYSTEMD_FIX}.") from None
    return count


def take_systemd_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[str, int]]:
    """Remove systemd's socket-activation variables and return the (name, fd) pairs they pass.

    Returns an empty list when ``LISTEN_FDS`` is unset. Names come from ``LISTEN_FDNAMES``
    (``"unknown"`` where systemd gives none, as ``sd_listen_fds_with_names`` does).

    :raises GraceError: when the variables are malformed or ``LISTEN_PID`` is another process.
    """
    environ = os.environ if environ is None else environ
    values = {name: environ.pop(name, None) for name in SYSTEMD_VARS}
    count_text, pid_text, names_text = (values[name] for name in SYSTEMD_VARS)
    if count_text is None:
        return []
    count = _fd_count(count_text)
    if pid_text is None:
        raise GraceError(f"LISTEN_FDS is set but LISTEN_PID is missing: {_SYSTEMD_FIX}.")
    try:
        pid = int(pid_text)
    except ValueError:
        raise GraceError(f"LISTEN_PID={pid_text!r} is not a pid: {_SYSTEMD_FIX}.") from None
    if pid != os.getpid():
        raise GraceError(
            f"LISTEN_PID={pid} is not this process ({os.getpid()}), so the sockets were meant"
            f" for another process (pid mismatch): {_SYSTEMD_FIX}."
        )
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise GraceError(
            f"LISTEN_FDNAMES names {len(names)} fds but LISTEN_FDS says {count}: {_SYSTEMD_FIX}."
        )
    names = names or ["unknown"] * count
    return [(names[i], SD_LISTEN_FDS_START + i) for i in range(count)]


def check_systemd_fds(environ: Mapping[str, str]) -> None:
    """Check systemd's socket-activation variables without taking them, for a server that
    adopts them itself (gunicorn) and, on a malformed value or an fd that is not a listener,
    fails with a traceback from deep inside. Read as ``sd_listen_fds`` and gunicorn read them:
    sockets meant for another process (``LISTEN_PID`` missing or not this one) are ignored.

    :raises GraceError: one line, naming the variable or the fd and the fix.
    """
    count_text = environ.get("LISTEN_FDS")
    if count_text is None:
        return
    _fd_count(count_text)  # read first, whoever the sockets are for
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None or (pid_text.strip().isdigit() and int(pid_text) != os.getpid()):
        return
    gunicorns = {name: value for name, value in environ.items() if name != "LISTEN_FDNAMES"}
    for _, fd in take_systemd_fds(gunicorns):  # gunicorn does not read the names
        lst.check_listener(fd, "LISTEN_FDS")
