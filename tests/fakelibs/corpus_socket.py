"""Opens a socket at import and keeps it (a metrics client)."""

import os
import socket

LOADED_IN = os.getpid()
SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SOCK.bind(("127.0.0.1", 0))


def usable() -> bool:
    """The socket is still this module's: a UDP socket bound to 127.0.0.1."""
    try:
        kind = SOCK.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        return kind == socket.SOCK_DGRAM and SOCK.getsockname()[0] == "127.0.0.1"
    except OSError:
        return False
