"""Fixtures of the unit tests (no process is started)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def listener():
    """A real listening socket on 127.0.0.1 (non-blocking, as the supervisor keeps it)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()
