"""A framework-free connection tracker, so a generation knows what it must finish before exit.

Adapters report each connection's life: :meth:`ConnectionTracker.accepted` in the accept loop
(*before* a handler thread starts, or a drain could see zero while an accepted connection is
still uncounted), :meth:`~ConnectionTracker.request_started` /
:meth:`~ConnectionTracker.request_finished` around each request, and
:meth:`~ConnectionTracker.closed` when the connection ends.

During a drain (:meth:`~ConnectionTracker.drain`):

* responses in flight and requests that arrive on idle keep-alive connections are served and
  marked ``Connection: close`` (adapters ask :attr:`~ConnectionTracker.draining`);
* connections idle longer than the keep-alive timeout are closed (the client may not reuse them
  anyway), never those idle for less, so a client reusing a fresh idle connection is not cut,
  nor one whose next request has arrived but is not read yet (its handler's thread is busy, or
  not yet scheduled): that request is served like any other;
* at the deadline whatever is left is closed and counted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from grace_plugins.options import DEFAULTS

#: How soon a drain looks again at an idle-looking connection with a request pending on it.
PENDING_RECHECK = 0.05


@dataclass
class DrainReport:
    """What a drain did: connections it waited for, and those closed at the deadline."""

    connections: int
    closed_at_deadline: int
    idle_closed: int
    elapsed_ms: float
    #: The supervisor cut the drain short (too many generations draining): what was left was
    #: closed then, not at the deadline.
    cut_short: bool = False


class _Connection:
    __slots__ = ("sock", "active", "idle_since", "requests")

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.active = True  # a fresh connection is expected to carry a request
        self.idle_since = time.monotonic()
        self.requests = 0


class ConnectionTracker:
    """Counts connections (active vs idle keep-alive); thread-safe."""

    def __init__(self, keepalive_timeout: float = DEFAULTS.keepalive_timeout) -> None:
        self.keepalive_timeout = keepalive_timeout
        self._lock = threading.Condition()
        self._connections: dict[Hashable, _Connection] = {}
        self._draining = False
        self._seen_while_draining = 0
        self._cut = False
        self.total_accepted = 0

    @property
    def draining(self) -> bool:
        """True once a drain began: responses should say ``Connection: close``."""
        return self._draining

    def accepted(self, key: Hashable, sock: socket.socket | None = None) -> None:
        """Count a new connection (call it before its handler starts). *sock* lets a drain
        close it; *key* identifies it in the later calls (the socket itself will do)."""
        with self._lock:
            self._connections[key] = _Connection(sock)
            self.total_accepted += 1
            if self._draining:
                self._seen_while_draining += 1

    def request_started(self, key: Hashable) -> None:
        """A request arrived on the connection: it is active until the response is sent."""
        with self._lock:
            conn = self._connections.get(key)
            if conn is not None:
                conn.active = True
                conn.requests += 1

    def request_finished(self, key: Hashable) -> None:
        """The response was sent; the connection is idle (keep-alive) until the next request."""
        with self._lock:
            conn = self._connections.get(key)
            if conn is not None:
                conn.active = False
                conn.idle_since = time.monotonic()
                self._lock.notify_all()

    def closed(self, key: Hashable) -> None:
        """The connection is gone."""
        with self._lock:
            if self._connections.pop(key, None) is not None:
                self._lock.notify_all()

    def counts(self) -> tuple[int, int]:
        """Return (active, idle) connection counts."""
        with self._lock:
            active = sum(1 for c in self._connections.values() if c.active)
            return active, len(self._connections) - active

    def begin_drain(self) -> None:
        """Mark the drain's start: from now on responses close their connections."""
        with self._lock:
            if not self._draining:
                self._draining = True
                self._seen_while_draining = len(self._connections)
                self._lock.notify_all()

    def cut_short(self) -> None:
        """Bring the drain's deadline to now (the supervisor has too many generations
        draining): :meth:`drain` closes what is left at once and counts it."""
        with self._lock:
            self._cut = True
            self._lock.notify_all()

    def drain(
        self,
        timeout: float,
        on_left: Callable[[int], None] | None = None,
        left_interval: float = 0.25,
    ) -> DrainReport:
        """Wait until every connection is closed, at most *timeout* seconds; blocks.

        Idle keep-alive connections are closed once idle for ``keepalive_timeout``; at the
        deadline every remaining connection is closed. Call after the listeners are closed.
        *on_left* hears how many connections are still open: at the start, then when the
        count changes, at most once per *left_interval* s (called without the lock held).
        """
        self.begin_drain()
        start = time.monotonic()
        deadline = start + timeout
        idle_closed = 0
        told: int | None = None  # the count *on_left* last heard
        told_at = float("-inf")
        with self._lock:
            while self._connections:
                now = time.monotonic()
                if now >= deadline or self._cut:
                    break
                next_check = deadline
                left = len(self._connections)
                if on_left is not None and left != told:
                    if now >= told_at + left_interval:
                        told, told_at = left, now
                        self._unlocked(on_left, left)
                        continue  # the connections may have changed meanwhile
                    next_check = told_at + left_interval
                for conn in self._connections.values():
                    if conn.active:
                        continue
                    expires = conn.idle_since + self.keepalive_timeout
                    if expires <= now and conn.sock is not None and _pending(conn.sock):
                        next_check = min(next_check, now + PENDING_RECHECK)
                    elif expires <= now and conn.sock is not None:
                        idle_closed += _shut(conn.sock)
                        conn.sock = None
                    else:
                        next_check = min(next_check, expires)
                self._lock.wait(max(0.01, min(next_check, deadline) - now))
            leftovers = 0
            for conn in self._connections.values():
                if conn.sock is not None:
                    leftovers += _shut(conn.sock)
                    conn.sock = None
            seen = self._seen_while_draining
            cut = self._cut
        return DrainReport(
            connections=seen,
            closed_at_deadline=leftovers,
            idle_closed=idle_closed,
            elapsed_ms=(time.monotonic() - start) * 1000,
            cut_short=cut,
        )

    def _unlocked(self, callback: Callable[[int], None], count: int) -> None:
        """Run *callback* with the lock released (it writes to a socket: request threads
        must not wait on it)."""
        self._lock.release()
        try:
            with contextlib.suppress(Exception):  # informative only: never ends the drain
                callback(count)
        finally:
            self._lock.acquire()


def _pending(sock: socket.socket) -> bool:
    """True if the client sent bytes that nobody has read yet: a request on a connection that
    looks idle. Peeks at the TCP stream itself (the raw bytes of a TLS connection too)."""
    if getattr(sock, "pending", lambda: 0)():  # TLS: decrypted, buffered, unread
        return True
    try:
        return bool(socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing pending (EAGAIN), or the connection is already gone
        return False


def _shut(sock: socket.socket) -> int:
    """Shut a connection down so its handler's blocked read returns; 1 if it was still open."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return 0
    return 1
