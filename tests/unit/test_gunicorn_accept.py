"""When a gunicorn worker takes a new connection (:func:`may_accept`)."""

from __future__ import annotations

import pytest

pytest.importorskip("gunicorn")

from grace_plugins.gunicorn.serve import may_accept  # noqa: E402


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
