"""The harness's view of ESTABLISHED connections names the server side of a real connection,
from sock_diag and from ``/proc`` alike (the tests' "who holds this request" rests on it)."""

from __future__ import annotations

import os
import socket

import pytest

from tests.harness import procfs


@pytest.fixture
def connection():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server_side, _ = listener.accept()
        with client, server_side:
            yield client, server_side


def link_of(sock: socket.socket) -> str:
    return f"socket:[{os.fstat(sock.fileno()).st_ino}]"


@pytest.mark.skipif(not procfs.LINUX_PROC, reason="needs Linux /proc")
@pytest.mark.parametrize("read", [procfs.established_sockets, procfs._established_from_proc])
def test_the_server_side_of_a_connection_is_found_by_its_client_port(connection, read):
    client, server_side = connection
    found = read(client.getsockname()[1])
    assert link_of(server_side) in found
    assert link_of(client) not in found  # the client side's peer is the listener's port
    assert {link_of(server_side), link_of(client)} <= read(None)


@pytest.mark.skipif(not procfs.LINUX_PROC, reason="needs Linux /proc")
def test_a_closed_connection_is_no_longer_established():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server_side, _ = listener.accept()
        port, link = client.getsockname()[1], link_of(server_side)
        client.close()
        server_side.close()
    assert link not in procfs.established_sockets(port)
