"""Fixtures of the unit tests (no process is started)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


@pytest.fixture
def listener():
    """A real listening socket on 127.0.0.1 (non-blocking, as the supervisor keeps it)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project directory for the watcher's tests (``tests/unit/watching.py``)."""
    from tests.unit.watching import make_proj

    return make_proj(tmp_path)
