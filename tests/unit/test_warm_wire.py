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


def test_fds_go_to_their_own_message_when_messages_are_read_together(pair):
    """A template reads a "grow" message and a fork request (with the generation's fds) sent
    right after it in one read: the fds belong to the fork request, not to the message first
    in the buffer."""
    left, right = pair
    r, w = os.pipe()
    try:
        left.send({"grow": "report.json"})
        left.send({"fork": 1}, [r, w])
        left.send({"after": 1})
        first, second, third = (right.receive(1.0) for _ in range(3))
        assert first == ({"grow": "report.json"}, [])
        assert second is not None and second[0] == {"fork": 1} and len(second[1]) == 2
        assert third == ({"after": 1}, [])
        for fd in second[1]:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_fds_of_a_large_message_arrive_with_it(pair):
    left, right = pair
    r, w = os.pipe()
    try:
        left.send({"before": "x" * 5000})
        big = {"fork": [f"/lib/module{i}.py" for i in range(4000)]}  # two reads
        left.send(big, [r])
        left.send({"pid": 7})
        assert right.receive(1.0) == ({"before": "x" * 5000}, [])
        message, fds = right.receive(5.0)
        assert message == big and len(fds) == 1
        os.close(fds[0])
        assert right.receive(1.0) == ({"pid": 7}, [])
    finally:
        os.close(r)
        os.close(w)
