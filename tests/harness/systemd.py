"""systemd as tests meet it: socket activation and a ``NOTIFY_SOCKET`` that knows who spoke."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tests.harness.server import PYTHON

#: Runs a server the way systemd's socket activation does: the listener moved to fd 3,
#: ``LISTEN_PID`` set to the pid that then execs the server (``argv[2:]``).
SOCKET_ACTIVATION_LAUNCHER = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd);"
    " os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
)


def socket_activated(argv: Sequence[str], listener: socket.socket) -> tuple[list[str], dict]:
    """(argv, env) that start *argv* with *listener* passed as systemd passes it (pass the
    listener's fd to the process, e.g. ``pass_fds``)."""
    fd = listener.fileno()
    launcher = [PYTHON, "-c", SOCKET_ACTIVATION_LAUNCHER, str(fd), *argv]
    return launcher, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}


@dataclass
class Notification:
    """One ``sd_notify`` datagram: who sent it (kernel credentials) and its fields."""

    pid: int
    fields: dict[str, str]


class NotifySocket:
    """A ``NOTIFY_SOCKET`` as systemd opens it: a Unix datagram socket that learns each
    sender's pid from the kernel (``SO_PASSCRED``), so a test can check that only the main pid
    speaks (``NotifyAccess=main``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def next(self, timeout: float, what: str) -> Notification:
        self.sock.settimeout(timeout)  # 0: only a notification already received
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (TimeoutError, BlockingIOError):
            raise AssertionError(f"no notification ({what}) within {timeout:g} s") from None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder, signed=True)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return Notification(pid, fields)

    def close(self) -> None:
        self.sock.close()
