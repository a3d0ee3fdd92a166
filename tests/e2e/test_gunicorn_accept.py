"""A new connection goes to a worker with a free thread. Gunicorn's gthread worker accepts
whatever its threads are doing, so a request could wait behind a slow one while another worker
idled; ``grace_plugins.Worker`` leaves it in the listen queue while all its threads are busy,
as gunicorn's sync worker does (see :func:`grace_plugins.gunicorn.serve.may_accept`)."""

from __future__ import annotations

import collections
import time

import pytest

from tests.harness import Load, http_get
from tests.harness.gunicorn import InFlight, start_gunicorn

pytest.importorskip("gunicorn")


@pytest.mark.timeout(60)
def test_a_new_connection_never_waits_behind_a_slow_request_while_a_worker_idles(
    start_server, tmp_path
):
    """Two workers of one thread: while one of them runs a 3 s request, every new connection
    is answered at once, by the other one."""
    server = start_gunicorn(start_server, tmp_path, workers=2, threads=1)
    slow = InFlight(server.port, "/hello?sleep=3")
    busy = slow.wait_held(server)
    for _ in range(6):
        began = time.monotonic()
        answer = http_get(server.port, timeout=10)
        took = time.monotonic() - began
        assert answer.pid != busy and took < 1.5, (answer.pid, busy, took)
    assert slow.join().pid == busy


@pytest.mark.timeout(60)
def test_connections_opened_at_once_spread_over_the_workers_free_threads(start_server, tmp_path):
    """Two workers of two threads, four 1 s requests on connections opened at once: each
    worker takes two (one thread each), none waits for a thread."""
    server = start_gunicorn(start_server, tmp_path, workers=2, threads=2)
    for _ in range(5):
        began = time.monotonic()
        burst = [InFlight(server.port, "/hello?sleep=1") for _ in range(4)]
        answers = [one.join() for one in burst]
        per_worker = collections.Counter(answer.pid for answer in answers)
        assert sorted(per_worker.values()) == [2, 2], per_worker
        assert all(one.finished - began < 1.8 for one in burst), [  # type: ignore[operator]
            one.finished - began
            for one in burst  # type: ignore[operator]
        ]


@pytest.mark.timeout(60)
def test_connections_queued_for_the_busy_thread_are_answered_at_a_stop(start_server, tmp_path):
    """Gunicorn's defaults (one worker, one thread): connections made while the thread runs a
    slow request wait in the listen queue, not in the worker. At a stop (the master closed its
    listeners) the worker accepts them before closing its own copies, which would reset them,
    and answers them in its drain."""
    server = start_gunicorn(start_server, tmp_path, workers=1, threads=None, keepalive=None)
    slow = InFlight(server.port, "/hello?sleep=2")
    slow.wait_held(server)
    queued = [InFlight(server.port, "/hello") for _ in range(3)]  # handshakes done, sent
    assert [one.held_by(server) for one in queued] == [None] * 3  # in the queue, not accepted
    assert server.stop() == 0
    for one in [slow, *queued]:
        assert one.join().status == 200


@pytest.mark.timeout(60)
def test_new_connections_get_their_turn_under_a_steady_keep_alive_load(start_server, tmp_path):
    """Gunicorn's defaults (one worker, one thread), its thread never idle: requests on
    kept-alive connections follow one another, and a new connection, left in the listen queue
    while the thread is busy, still gets its turn (within a few requests), as in gthread's
    pool; it once waited until the clients gave up."""
    server = start_gunicorn(start_server, tmp_path, workers=1, threads=None, keepalive=None)
    with Load(server.port, fresh=2, keepalive=4, slow=0, timeout=2.0, max_seconds=30) as load:
        time.sleep(4)  # the load's own length: nothing to wait for
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.by_kind.get("fresh", 0) >= 50, report.summary()
