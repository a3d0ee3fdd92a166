"""The private channel between the supervisor and one generation.

A ``socketpair``: one end stays in the supervisor, the other is the only fd besides the
listeners that a generation inherits. Nobody else can open it (it has no name in the file
system). Messages are short ASCII lines:

* generation -> supervisor: ``ready`` (the app is imported and serving), ``upgrade`` (please
  start a new generation: a HUP reached the generation), ``left N`` (while draining: it still
  holds N connections; sent when N changes, at most every :data:`LEFT_INTERVAL` s, for
  ``grace-plugins status``), ``watch SPEC`` (what the supervisor's file watcher should watch:
  what this generation loaded, or what it tried before it failed; one JSON line, see
  :class:`~grace_plugins.watchspec.WatchSpec`), ``stopped`` (it no longer accepts: sent once
  its listener fds are plugged; an upgrade's outcome waits for it, see
  :mod:`grace_plugins.outcome_hold`);
* supervisor -> generation: ``drain`` (stop accepting, finish, exit); a second ``drain``
  cuts the drain short (close what is left now: too many generations are draining).

A side ignores a line it does not know (a supervisor and a generation may run different
versions after an upgrade of the package): a generation that never sends ``left`` only makes
``status`` omit the count.

End of file means the other side is gone: a supervisor sees it when a generation dies (so a
crash before ``ready`` rolls the upgrade back at once), a generation when its supervisor died
(so it drains and exits instead of serving forever, orphaned).
"""

from __future__ import annotations

import socket

READY = "ready"
UPGRADE = "upgrade"
DRAIN = "drain"
STOPPED = "stopped"
LEFT = "left"
WATCH = "watch"
#: The least time between two ``left`` messages from one generation (the state file is
#: rewritten on each).
LEFT_INTERVAL = 0.25
#: The longest line kept (a watch spec names every loaded file: tens of kB); a longer one is
#: dropped whole, never cut into a line of another meaning.
MAX_LINE = 4 << 20
_READ = 1 << 16


def left_message(count: int) -> str:
    """The ``left N`` line: *count* connections still held by a draining generation."""
    return f"{LEFT} {max(0, int(count))}"


def parse_left(line: str) -> int | None:
    """The count of a well-formed ``left N`` line (N a decimal >= 0), else ``None``: the
    caller ignores the line, as any line it does not know."""
    word, _, rest = line.partition(" ")
    if word != LEFT or not rest.isascii() or not rest.isdigit() or len(rest) > 9:
        return None
    return int(rest)


def watch_message(encoded_spec: str) -> str:
    """The ``watch SPEC`` line (*encoded_spec*: :meth:`WatchSpec.encode`'s one line)."""
    return f"{WATCH} {encoded_spec}"


def parse_watch(line: str) -> str | None:
    """The encoded spec of a ``watch SPEC`` line, else ``None``."""
    word, _, rest = line.partition(" ")
    return rest if word == WATCH and rest else None


class Channel:
    """One end of the channel, speaking whole lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._dropping = False

    @classmethod
    def pair(cls) -> tuple[Channel, socket.socket]:
        """Return (the supervisor's end, the generation's socket to pass as an fd)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(ours), theirs

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        """Adopt the inherited end (in a generation); the fd becomes close-on-exec."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        sock.set_inheritable(False)
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: str) -> bool:
        """Send one line; blocks at most briefly. Returns False if the peer is gone."""
        try:
            self.sock.sendall(message.encode("ascii") + b"\n")
        except OSError:
            return False
        return True

    def receive(self) -> list[str] | None:
        """Read what is available (one ``recv``); return whole lines, or ``None`` at EOF.

        Blocks only if the socket is blocking and nothing is available.
        """
        try:
            data = self.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        return self._lines(data)

    def _lines(self, data: bytes) -> list[str]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._buffer, self._dropping = b"", True
        found = []
        for line in lines:
            if self._dropping:  # the end of a line too long to keep
                self._dropping = False
                continue
            if line.strip():
                found.append(line.decode("ascii", "replace").strip())
        return found

    def receive_rest(self, most: int = 64) -> tuple[list[str], bool]:
        """Everything the peer already sent (it exited: nothing more comes), at most *most*
        reads: (its whole lines, whether the end of file was reached). Never blocks on a
        non-blocking socket."""
        lines: list[str] = []
        for _ in range(most):
            try:
                data = self.sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                return lines, False
            except OSError:
                return lines, True
            if not data:
                return lines, True
            lines += self._lines(data)
        return lines, False

    def close(self) -> None:
        self.sock.close()
