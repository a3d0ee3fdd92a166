"""The private channel between the supervisor and one generation.

A ``socketpair``: one end stays in the supervisor, the other is the only fd besides the
listeners that a generation inherits. Nobody else can open it (it has no name in the file
system). Messages are short ASCII lines:

* generation -> supervisor: ``ready`` (the app is imported and serving), ``upgrade`` (please
  start a new generation: a HUP reached the generation, or a watched file changed);
* supervisor -> generation: ``drain`` (stop accepting, finish, exit); a second ``drain``
  cuts the drain short (close what is left now: too many generations are draining).

End of file means the other side is gone: a supervisor sees it when a generation dies (so a
crash before ``ready`` rolls the upgrade back at once), a generation when its supervisor died
(so it drains and exits instead of serving forever, orphaned).
"""

from __future__ import annotations

import socket

READY = "ready"
UPGRADE = "upgrade"
DRAIN = "drain"
_MAX_BUFFER = 4096


class Channel:
    """One end of the channel, speaking whole lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

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
            data = self.sock.recv(_MAX_BUFFER)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self._buffer = self._buffer[-_MAX_BUFFER:]
        return [line.decode("ascii", "replace").strip() for line in lines if line.strip()]

    def close(self) -> None:
        self.sock.close()
