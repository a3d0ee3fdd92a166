"""The master's side of a spare request (:meth:`MoldHandle.make_spare`), against a mold played
by the test on the other end of a real socket pair: an answer that comes too late must never be
read as the answer to the next request."""

from __future__ import annotations

import os
import socket

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn import mold_handle  # noqa: E402
from grace_plugins.gunicorn.mold_handle import MoldHandle  # noqa: E402
from grace_plugins.wire import Wire, close_fds  # noqa: E402


@pytest.fixture
def mold():
    """(the master's handle, the mold's end of the socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield MoldHandle(2, os.getpid(), Wire(ours), 0.0), Wire(theirs)
    ours.close()
    theirs.close()


def test_a_spare_request_left_unanswered_gives_the_mold_up(mold, monkeypatch):
    handle, theirs = mold
    monkeypatch.setattr(mold_handle, "FORK_TIMEOUT", 0.1)
    assert handle.make_spare() is None
    assert handle.gone()  # its late answer cannot be taken for the next fork's
    got = theirs.receive(1)
    assert got is not None and got[0] == {"spare": 1} and len(got[1]) == 1
    close_fds(got[1])


def test_a_refused_spare_leaves_the_mold_in_use(mold):
    handle, theirs = mold
    theirs.send({"error": "the fork did not report the spare's pid"})
    assert handle.make_spare() is None
    assert not handle.gone()


def test_a_spare_has_its_own_socket_and_the_mold_s_generation(mold):
    handle, theirs = mold
    theirs.send({"pid": 4242})
    spare = handle.make_spare()
    assert spare is not None and (spare.pid, spare.gen) == (4242, 2)
    request, fds = theirs.receive(1) or ({}, [])
    assert request == {"spare": 1} and len(fds) == 1
    spare_end = Wire(socket.socket(fileno=fds[0]))
    spare_end.send({"hello": 1})
    assert spare.wire.receive(1) == ({"hello": 1}, [])
    spare_end.sock.close()
    spare.wire.sock.close()
    assert handle.pids() == [handle.pid]  # the caller attaches it
