"""A drain cut short by the supervisor closes what is left at once and counts it."""

from __future__ import annotations

import socket
import threading
import time

from grace_plugins.drain import ConnectionTracker


def test_cut_short_ends_a_drain_long_before_its_deadline():
    tracker = ConnectionTracker(keepalive_timeout=60)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        tracker.accepted("busy", ours)
        tracker.request_started("busy")  # an active request: only the deadline would end it
        reports = []
        drainer = threading.Thread(target=lambda: reports.append(tracker.drain(30)))
        drainer.start()
        began = time.monotonic()
        tracker.cut_short()
        drainer.join(5)
        assert not drainer.is_alive()
        assert time.monotonic() - began < 2
        assert theirs.recv(1) == b""  # the client sees the connection closed
    report = reports[0]
    assert (report.connections, report.closed_at_deadline, report.cut_short) == (1, 1, True)


def test_cut_before_the_drain_starts_returns_at_once():
    tracker = ConnectionTracker()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        tracker.accepted("busy", ours)
        tracker.cut_short()
        began = time.monotonic()
        report = tracker.drain(30)
        assert time.monotonic() - began < 1
    assert report.cut_short and report.closed_at_deadline == 1


def test_a_drain_not_cut_says_so():
    report = ConnectionTracker().drain(1)
    assert report.cut_short is False and report.connections == 0
