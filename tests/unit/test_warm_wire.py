"""The template's wire: newline-delimited JSON with fds riding along (no process started)."""

from __future__ import annotations

import os
import socket

import pytest

from grace_plugins.wire import Wire


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield Wire(a), Wire(b)
    a.close()
    b.close()


def test_a_message_carries_its_fds(pair):
    left, right = pair
    r, w = os.pipe()
    try:
        left.send({"fds": [r]}, [r])
        message, fds = right.receive(1.0)
        assert message == {"fds": [r]} and len(fds) == 1
        os.write(w, b"x")
        assert os.read(fds[0], 1) == b"x"  # the same pipe, under another number
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_a_large_message_arrives_whole_and_in_order(pair):
    left, right = pair
    big = {"stamps": {f"/lib/module{i}.py": [i, i] for i in range(3000)}}
    left.send(big)
    left.send({"pid": 7})
    assert right.receive(1.0) == (big, [])
    assert right.receive(1.0) == ({"pid": 7}, [])


def test_no_message_yet_is_a_timeout_and_a_partial_one_is_kept(pair):
    left, right = pair
    with pytest.raises(TimeoutError):
        right.receive(0.0)
    left.sock.sendall(b'{"ready":')
    with pytest.raises(TimeoutError):
        right.receive(0.05)
    left.sock.sendall(b"1}\n")
    assert right.receive(1.0) == ({"ready": 1}, [])


def test_end_of_file_is_none(pair):
    left, right = pair
    left.sock.close()
    assert right.receive(1.0) is None
