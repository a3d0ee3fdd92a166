"""The core's tracked stdlib server (``tracked_server`` over ``drain``), in process: threads and
sockets on 127.0.0.1, no process started.

A drain answers every request that has reached the generation, whatever its handler thread is
doing: a request that arrived on a kept-alive connection and a connection accepted but not yet
read are both served with ``Connection: close``; only a connection with nothing pending is
closed as idle. The handler here can be held before it reads (:meth:`Served.hold`), as a busy
or descheduled thread would be.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

import pytest

from grace_plugins.drain import ConnectionTracker, DrainReport
from grace_plugins.tracked_server import TrackedHandlerMixin, TrackedServerMixin
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(30)


class Server(TrackedServerMixin, ThreadingMixIn, HTTPServer):
    daemon_threads = True
    #: how many requests handlers may still read before they wait for :attr:`release`
    #: (None: no limit)
    reads_left: int | None = None
    release: threading.Event


class Handler(TrackedHandlerMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def handle_one_request(self) -> None:
        server = self.server
        if server.reads_left is not None:
            if server.reads_left == 0:
                server.release.wait(10)
            else:
                server.reads_left -= 1
        super().handle_one_request()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Connection", "keep-alive")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class WatchedCondition(threading.Condition):
    """The tracker's lock, counting the drain's waits: the drain waits only after it has looked
    at every connection, so one wait means every connection was judged once."""

    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


@dataclass
class Served:
    server: Server
    port: int
    tracker: ConnectionTracker
    lock: WatchedCondition
    loop: threading.Thread
    reports: list[DrainReport] = field(default_factory=list)
    drains: list[threading.Thread] = field(default_factory=list)

    def hold(self, after: int = 0) -> None:
        """After *after* more requests, handlers wait for :meth:`release` before they read."""
        self.server.reads_left = after

    def release(self) -> None:
        self.server.release.set()

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def drain(self, timeout: float = 5.0) -> None:
        """Start the drain on a thread of its own (as a generation does once its serve loop
        ended) and wait until it has judged every connection once."""
        thread = threading.Thread(target=lambda: self.reports.append(self.tracker.drain(timeout)))
        self.drains.append(thread)
        thread.start()
        wait_until(lambda: self.lock.waits >= 1, 5, "the drain's first look at the connections")

    def report(self) -> DrainReport:
        for thread in self.drains:
            thread.join(10)
        assert len(self.reports) == 1
        return self.reports[0]

    def unread(self) -> bytes:
        """What the client sent on the one tracked connection that its handler has not read."""
        (conn,) = self.tracker._connections.values()
        assert conn.sock is not None
        try:
            return conn.sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """serve(keepalive_timeout=0) -> a threaded HTTP/1.1 server with keep-alive, tracked, shut
    down after the test. Keep-alive timeout 0: idle connections expire at once during a drain,
    the case where a pending request is most at risk."""
    started: list[Served] = []

    def start(keepalive_timeout: float = 0) -> Served:
        server = Server(("127.0.0.1", 0), Handler)
        server.release = threading.Event()
        tracker = ConnectionTracker(keepalive_timeout=keepalive_timeout)
        lock = WatchedCondition()
        tracker._lock = lock
        server.tracker = tracker
        loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        loop.start()
        started.append(Served(server, server.server_address[1], tracker, lock, loop))
        return started[-1]

    yield start
    for state in started:
        state.release()
        state.server.shutdown()
        state.server.server_close()
        state.loop.join(5)
        for thread in state.drains:
            thread.join(10)
        assert not state.loop.is_alive()


def get(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    response = conn.getresponse()
    assert response.read() == b"ok"
    return response


def test_counts_and_closes_keepalive_while_draining(serve):
    served = serve(keepalive_timeout=5)
    conn = served.client()
    try:
        conn.request("GET", "/")
        assert not get(conn).will_close
        assert served.tracker.total_accepted == 1
        served.tracker.begin_drain()
        conn.request("GET", "/")  # the idle keep-alive connection is served, then closed
        second = get(conn)
        assert second.getheader("Connection") == "close" and second.will_close
    finally:
        conn.close()


def test_request_pending_on_a_kept_alive_connection_is_answered(serve):
    served = serve()
    conn = served.client()
    served.hold(after=1)  # after the first request its thread is busy: the next waits unread
    try:
        conn.request("GET", "/")
        assert not get(conn).will_close
        conn.request("GET", "/")
        wait_until(served.unread, 5, "the second request to reach the server")
        served.drain()  # its connection looks idle, past its keep-alive timeout
        served.release()
        second = get(conn)
        assert second.getheader("Connection") == "close"
    finally:
        conn.close()
    # answered: nothing left at the deadline (once answered, the connection may be counted
    # as idle-closed by the drain or closed by its handler: whichever comes first)
    assert served.report().closed_at_deadline == 0


def test_connection_accepted_but_not_read_is_answered(serve):
    served = serve()
    served.hold()
    conn = served.client()
    try:
        conn.connect()
        wait_until(lambda: served.tracker.total_accepted == 1, 5, "the connection accepted")
        served.drain()  # accepted, nothing read yet (nothing even sent)
        conn.request("GET", "/")
        wait_until(served.unread, 5, "the request to reach the server")
        served.release()
        first = get(conn)
        assert first.getheader("Connection") == "close"
    finally:
        conn.close()
    report = served.report()
    assert (report.connections, report.closed_at_deadline) == (1, 0)


def test_idle_connection_with_nothing_pending_is_closed(serve):
    served = serve()
    conn = served.client()
    try:
        conn.request("GET", "/")
        assert not get(conn).will_close
        wait_until(lambda: served.tracker.counts() == (0, 1), 5, "an idle keep-alive connection")
        served.drain()
        report = served.report()
        assert (report.idle_closed, report.closed_at_deadline) == (1, 0)
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # an orderly close, not a reset
    finally:
        conn.close()
