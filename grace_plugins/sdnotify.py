"""The systemd notify protocol (``sd_notify``), without libsystemd.

When ``NOTIFY_SOCKET`` is set (``Type=notify`` / ``Type=notify-reload`` units), the supervisor
reports ``READY=1``, ``RELOADING=1`` with ``MONOTONIC_USEC``, ``STATUS=...`` and
``STOPPING=1``. Without the variable every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

#: The variable systemd sets for ``Type=notify`` units.
NOTIFY_VAR = "NOTIFY_SOCKET"


class Notifier:
    """Sends datagrams to the socket systemd named; never raises."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get(NOTIFY_VAR) if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; return whether it was sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self, status: str) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")
