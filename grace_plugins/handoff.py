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

import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from grace_plugins.errors import GraceError
from grace_plugins.options import DEFAULTS

HANDOFF_VAR = "GRACE_PLUGINS_HANDOFF"
FORMAT_VERSION = 1
SYSTEMD_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
SD_LISTEN_FDS_START = 3


@dataclass
class Handoff:
    """What a generation receives from its supervisor."""

    supervisor_pid: int
    generation: int
    #: (listener name, fd) pairs.
    listeners: list[tuple[str, int]]
    #: The private channel to the supervisor (readiness, upgrade requests, drain orders).
    channel_fd: int
    ready_timeout: float = DEFAULTS.ready_timeout
    drain_timeout: float = DEFAULTS.drain_timeout
    keepalive_timeout: float = DEFAULTS.keepalive_timeout

    def encode(self) -> str:
        """Return the variable's value."""
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "supervisor": self.supervisor_pid,
                "generation": self.generation,
                "listeners": [[name, fd] for name, fd in self.listeners],
                "channel": self.channel_fd,
                "ready_timeout": self.ready_timeout,
                "drain_timeout": self.drain_timeout,
                "keepalive_timeout": self.keepalive_timeout,
            },
            separators=(",", ":"),
        )


def _bad(problem: str) -> GraceError:
    return GraceError(
        f"{HANDOFF_VAR} {problem}: it is set only by a grace_plugins supervisor for its"
        f" generations; unset it and start the server again."
    )


def _fd(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"has an invalid {what} fd {value!r}")
    return value


def take_handoff(environ: MutableMapping[str, str] | None = None) -> Handoff | None:
    """Remove our handoff variable from *environ* and return it parsed, or ``None`` if unset.

    Does not touch the fds: :func:`grace_plugins.listeners.adopt` validates them.

    :raises GraceError: when the value is malformed, of another format version, or addressed
        to a process whose parent is not the supervisor that wrote it.
    """
    environ = os.environ if environ is None else environ
    raw = environ.pop(HANDOFF_VAR, None)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise _bad(f"is not valid JSON ({raw[:40]!r})") from None
    if not isinstance(data, dict):
        raise _bad("is not a JSON object")
    version = data.get("v")
    if version != FORMAT_VERSION:
        raise GraceError(
            f"{HANDOFF_VAR} has format version {version!r}, this grace_plugins reads"
            f" {FORMAT_VERSION}: the supervisor runs another grace_plugins version; stop it and"
            " start the server again (a full restart, not an upgrade)."
        )
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
    try:
        return Handoff(
            supervisor_pid=supervisor,
            generation=int(data.get("generation", 0)),
            listeners=pairs,
            channel_fd=_fd(data.get("channel"), "channel"),
            ready_timeout=float(data.get("ready_timeout", DEFAULTS.ready_timeout)),
            drain_timeout=float(data.get("drain_timeout", DEFAULTS.drain_timeout)),
            keepalive_timeout=float(data.get("keepalive_timeout", DEFAULTS.keepalive_timeout)),
        )
    except (TypeError, ValueError) as exc:
        raise _bad(f"has an invalid value ({exc})") from None


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
    fix = "unset LISTEN_FDS/LISTEN_PID or start the server directly from its socket unit"
    try:
        count = int(count_text)
        if count < 0:
            raise ValueError
    except ValueError:
        raise GraceError(f"LISTEN_FDS={count_text!r} is not a count of fds: {fix}.") from None
    if pid_text is None:
        raise GraceError(f"LISTEN_FDS is set but LISTEN_PID is missing: {fix}.")
    try:
        pid = int(pid_text)
    except ValueError:
        raise GraceError(f"LISTEN_PID={pid_text!r} is not a pid: {fix}.") from None
    if pid != os.getpid():
        raise GraceError(
            f"LISTEN_PID={pid} is not this process ({os.getpid()}), so the sockets were meant"
            f" for another process (pid mismatch): {fix}."
        )
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise GraceError(
            f"LISTEN_FDNAMES names {len(names)} fds but LISTEN_FDS says {count}: {fix}."
        )
    names = names or ["unknown"] * count
    return [(names[i], SD_LISTEN_FDS_START + i) for i in range(count)]
