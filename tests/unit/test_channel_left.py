"""``left N``: how a draining generation tells the supervisor the connections it still holds.

The message (its parsing is tolerant: anything else is ignored, as an unknown line) and the
drain loop that sends it: at the start, on each change, at most once per interval.
"""

from __future__ import annotations

import socket
import threading

import pytest

from grace_plugins import channel as msg
from grace_plugins.channel import Channel
from grace_plugins.drain import ConnectionTracker

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("line", "count"),
    [("left 0", 0), ("left 3", 3), ("left 120", 120), ("left 007", 7)],
)
def test_a_well_formed_left_line_gives_its_count(line, count):
    assert msg.parse_left(line) == count


@pytest.mark.parametrize(
    "line",
    [
        "left",
        "left ",
        "left -1",
        "left x",
        "left 1 2",
        "left 1.5",
        "lefty 3",
        "LEFT 3",
        "left \u0663",
        "left 99999999999",
        "ready",
        "drain",
        "",
    ],
)
def test_anything_else_is_not_a_count(line):
    assert msg.parse_left(line) is None


def test_the_message_round_trips_through_the_channel():
    ours, theirs = Channel.pair()
    with theirs:
        generation = Channel(theirs)
        assert generation.send(msg.left_message(4)) and generation.send(msg.left_message(-2))
        assert msg.left_message(4) == "left 4"
        assert [msg.parse_left(line) for line in ours.receive() or []] == [4, 0]
    ours.close()


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    return [socket.socketpair() for _ in range(n)]


def test_the_drain_reports_the_count_at_its_start_and_on_each_change():
    tracker = ConnectionTracker(keepalive_timeout=60)
    pairs = _pairs(3)
    for index, (ours, _) in enumerate(pairs):
        tracker.accepted(index, ours)
        tracker.request_started(index)
    heard: list[int] = []
    changed = threading.Condition()

    def hear(count: int) -> None:
        with changed:
            heard.append(count)
            changed.notify_all()

    reports: list = []
    thread = threading.Thread(
        target=lambda: reports.append(tracker.drain(5, on_left=hear, left_interval=0.01))
    )
    thread.start()
    for expected, key in ((3, 0), (2, 1), (1, 2)):
        with changed:
            assert changed.wait_for(lambda e=expected: e in heard, 3), (expected, heard)
        tracker.closed(key)
    thread.join(5)
    assert not thread.is_alive()
    assert heard == [3, 2, 1]  # 0 is not sent: the drain ends, the generation exits
    assert reports[0].connections == 3 and reports[0].closed_at_deadline == 0
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_changes_within_the_interval_are_not_sent():
    tracker = ConnectionTracker(keepalive_timeout=60)
    pairs = _pairs(2)
    for index, (ours, _) in enumerate(pairs):
        tracker.accepted(index, ours)
        tracker.request_started(index)
    heard: list[int] = []
    first = threading.Event()

    def hear(count: int) -> None:
        heard.append(count)
        first.set()

    reports: list = []
    thread = threading.Thread(
        target=lambda: reports.append(tracker.drain(5, on_left=hear, left_interval=30))
    )
    thread.start()
    assert first.wait(3)
    tracker.closed(0)  # 1 left: due only 30 s after the first report
    tracker.closed(1)
    thread.join(5)
    assert not thread.is_alive()
    assert heard == [2]
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_a_report_that_fails_does_not_end_the_drain():
    tracker = ConnectionTracker(keepalive_timeout=60)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        tracker.accepted("busy", ours)
        tracker.request_started("busy")

        def broken(count: int) -> None:
            raise BrokenPipeError("the supervisor is gone")

        timer = threading.Timer(0.3, tracker.closed, args=("busy",))
        timer.start()
        report = tracker.drain(5, on_left=broken)
        timer.join()
    assert report.connections == 1 and report.closed_at_deadline == 0


def test_a_drain_without_connections_reports_nothing():
    heard: list[int] = []
    ConnectionTracker().drain(1, on_left=heard.append)
    assert heard == []
