"""When a gunicorn worker takes a new connection (:func:`may_accept`), and one it left waiting
in the listen queue (:func:`admits_the_waiting`)."""

from __future__ import annotations

import pytest

pytest.importorskip("gunicorn")

from grace_plugins.gunicorn.serve import admits_the_waiting, may_accept  # noqa: E402


@pytest.mark.parametrize(
    ("held", "busy", "threads", "accepts"),
    [
        (0, 0, 1, True),  # idle
        (1, 1, 1, False),  # its one thread runs a request: a sibling, or later
        (5, 0, 1, True),  # five idle keep-alive connections take no thread
        (3, 3, 4, True),  # a thread is free
        (4, 4, 4, False),
        (6, 5, 4, False),  # a request queued already
    ],
)
def test_a_worker_accepts_only_with_a_free_thread(held, busy, threads, accepts):
    assert may_accept(held, 1000, busy, threads) is accepts


def test_worker_connections_still_caps_what_a_worker_holds():
    assert may_accept(999, 1000, 0, 4)
    assert not may_accept(1000, 1000, 0, 4)


@pytest.mark.parametrize(
    ("ahead", "busy", "threads", "admits"),
    [
        (None, 0, 1, False),  # nothing left waiting: the listener judges the next arrival
        (2, 2, 1, False),  # two requests were ahead of it: its turn has not come
        (1, 1, 1, False),
        (0, 1, 1, True),  # they finished (a kept-alive request took the thread since): its turn
        (-3, 2, 1, True),
        (2, 1, 2, True),  # a thread is free
    ],
)
def test_a_connection_left_waiting_gets_its_turn(ahead, busy, threads, admits):
    assert admits_the_waiting(ahead, 5, 1000, busy, threads) is admits


def test_worker_connections_caps_the_waiting_too():
    assert not admits_the_waiting(0, 1000, 1000, 0, 4)
