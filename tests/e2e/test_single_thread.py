"""The core's single-threaded modes drain like the threaded ones: ``grace_plugins.run_simple(
threaded=False)`` (werkzeug's ``BaseWSGIServer``) and ``python manage.py runhot --nothreading``
serve one request at a time, and a HUP under load loses nothing.

Neither framework keeps a connection alive with one thread: every response says
``Connection: close`` (werkzeug's development server never keeps connections alive; Django's
only when threaded). So the keep-alive and idle clients here open a connection per request,
and the tests say so (``report.reused == 0``): a request pending on a kept-alive connection at
drain time cannot arise in these modes (the core's tracked server, which does keep connections
alive, is tested for it in ``tests/unit/test_tracked_server.py``). What one thread does make
possible, and what is checked here:

* a request waiting while the only thread serves a slow one: its connection is not even
  accepted (it waits in the listener's queue, which every generation shares) and must be
  answered, by the new generation;
* a connection accepted but not read yet when the drain begins (the only thread is blocked
  reading it): a request sent on it then is answered by the old generation, with
  ``Connection: close``.
"""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest

from tests.harness import (
    READY_LINE,
    Load,
    ServerProcess,
    django_site,
    flask_site,
    holder_of,
    read_response,
    wait_until,
)
from tests.harness.inflight import LongRequest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/net"), reason="needs /proc")
#: The request in flight at each HUP: long enough that the one thread is surely still busy
#: with it while the test looks at the connections queued behind it.
LONG_SECONDS = 3.0


@dataclass
class Single:
    """A single-threaded server under test, and how to change its code."""

    server: ServerProcess
    port: int
    set_version: Callable[[str], None]

    def generations(self) -> Iterable[int]:
        return self.server.generation_pids().values()


@pytest.fixture(params=["run_simple", "runhot"])
def single(request, start_server, tmp_path) -> Single:
    if request.param == "run_simple":
        pytest.importorskip("werkzeug")
        server, port, script = flask_site.start_script(start_server, tmp_path, threaded=False)
        return Single(server, port, lambda version: flask_site.set_version(script, version))
    pytest.importorskip("django")
    site = django_site.copy_site(tmp_path)
    server = django_site.runhot(start_server, site, "--nothreading", "--noreload")
    assert server.port is not None
    return Single(server, server.port, lambda version: django_site.set_version(site, version))


@pytest.mark.timeout(180)
def test_five_hups_under_load_with_a_slow_request_in_flight_lose_nothing(single):
    server, port = single.server, single.port
    with Load(
        port, fresh=2, keepalive=2, idle=2, idle_seconds=1.0, slow=0, max_seconds=150
    ) as load:
        wait_until(lambda: load.report.requests > 20, 15, "load to start")
        for number in range(2, 7):
            long = LongRequest(port, LONG_SECONDS)
            holder = long.held_by(single.generations)
            single.set_version(f"v{number}")
            new = server.upgrade(60)
            wait_until(lambda p=new: p in load.report.pids, 15, f"the load to reach pid {new}")
            resp = long.finish(LONG_SECONDS + 20)
            assert (resp.status, resp.pid, resp.version) == (200, holder, f"v{number - 1}")
            assert resp.headers.get("connection") == "close"
        report = load.stop()
    print(f"\n{report.summary()}")
    assert report.failures == [], report.summary()
    assert report.stale == 0, report.summary()
    # no keep-alive with one thread (see the module doc): should that change, this test must
    # then also count the requests that meet a closed kept-alive connection
    assert report.reused == 0, report.summary()
    assert report.reconnects == report.by_kind["keepalive"] + report.by_kind["idle"]
    assert {"v1", "v6"} <= report.versions, report.summary()
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_request_queued_behind_a_slow_one_is_answered_by_the_new_generation(single):
    server, port = single.server, single.port
    long = LongRequest(port, LONG_SECONDS)
    old = long.held_by(single.generations)
    queued = LongRequest(port, 0)  # sent; the only thread is busy with the long request
    assert holder_of(single.generations(), queued.client_port) is None, "accepted already"
    single.set_version("v2")
    new = server.upgrade(60)
    resp = queued.finish(30)
    assert (resp.status, resp.pid, resp.version) == (200, new, "v2")
    slow = long.finish(LONG_SECONDS + 20)
    assert (slow.status, slow.pid, slow.version) == (200, old, "v1")
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_connection_accepted_but_not_read_when_the_drain_begins_is_answered(single):
    server, port = single.server, single.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.connect()  # nothing sent: the only thread blocks reading it
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        old = wait_until(
            lambda: holder_of(single.generations(), client_port), 10, "the connection accepted"
        )
        mark = server.mark()
        single.set_version("v2")
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(READY_LINE, 60, after=mark)
        server.wait_for(r"\[gen 1 \d+\] draining \(asked by the supervisor\)", 15, after=mark)
        conn.request("GET", "/hello")
        resp, closing = read_response(conn)
    finally:
        conn.close()
    assert (resp.status, resp.pid, resp.version) == (200, old, "v1")
    assert resp.headers.get("connection") == "close" and closing
    server.wait_for(r"generation 1 \(pid \d+\) exited after draining", 30, after=mark)
    assert server.stop() == 0
