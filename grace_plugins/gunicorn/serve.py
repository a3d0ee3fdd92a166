"""gunicorn's threaded worker (``gthread``) whose stop is a drain.

Every connection is counted in a :class:`~grace_plugins.drain.ConnectionTracker` from accept to
close, and a stop closes this worker's copies of the listeners (never ``shutdown()``: the
listener is shared), finishes what is in flight, answers requests on idle keep-alive
connections with ``Connection: close``, closes connections idle past ``keepalive`` (not
gthread's 2 s stop linger), gives up at ``graceful_timeout`` and logs one line.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import selectors
import threading
import time
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from grace_plugins.drain import ConnectionTracker

#: How often a draining worker (and one that waits for a verdict) looks around.
POLL = 0.1
# gthread's internals changed across releases: tolerate what older ones lack (24.1+).
_DEFER = getattr(gthread, "_DEFER", object())
_GRACEFUL_CLOSE = "graceful" in inspect.signature(gthread.TConn.close).parameters


def may_accept(held: int, most: int, busy: int, threads: int) -> bool:
    """Whether a worker takes a new connection now: it holds fewer than gunicorn's
    ``worker_connections`` (*most*), and one of its *threads* is free for it (*busy*: the
    connections handed to the thread pool and not yet back). A worker whose threads are all
    busy leaves the connection in the listen queue, to a sibling with a free thread or to
    itself once one frees: accepted here, it would wait behind a slow request while another
    worker idles. Gunicorn's sync worker never accepts while busy; its gthread worker does."""
    return held < most and busy < threads


def admits_the_waiting(ahead: int | None, held: int, most: int, busy: int, threads: int) -> bool:
    """Whether a worker now takes the connection it left in the listen queue (:func:`may_accept`
    said no): once a thread is free, or once every request that was ahead of it in this
    worker's pool then has finished (*ahead*: how many are left; ``None``: none waits). Without
    the second, requests on kept-alive connections, which never wait, would take every freed
    thread under a steady load and the new connection would wait in the queue for ever: it
    gets its turn, as in gthread's pool."""
    if ahead is None or held >= most:
        return False
    return ahead <= 0 or busy < threads


class _TrackedConn(gthread.TConn):
    """gthread's connection, counted in the tracker from accept to close."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any, tracker: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.tracker = tracker
        tracker.accepted(self, sock)

    def close(self, graceful: bool = False) -> None:
        try:
            if _GRACEFUL_CLOSE:
                super().close(graceful)
            else:
                super().close()
        finally:
            self.tracker.closed(self)


class DrainingWorker(gthread.ThreadWorker):
    """gthread with counted connections and a drain (:meth:`drain`) as its way to stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # runs in the master, before the fork
        self.tracker = ConnectionTracker(keepalive_timeout=float(self.cfg.keepalive))
        self._stop_reason = ""
        self.busy = 0  # connections in the thread pool (queued or running): :func:`may_accept`
        #: requests ahead, in the pool, of a connection left in the listen queue (None: none
        #: left there): :func:`admits_the_waiting`
        self.ahead: int | None = None

    def stopped_accepting(self) -> None:
        """This worker's listeners are closed (its drain began): for a subclass to report."""

    def stop_serving(self, reason: str) -> None:
        """Leave the serving loop; the drain's log line gives *reason*."""
        self._stop_reason = reason
        self.alive = False

    # -- connections ------------------------------------------------------------------------------
    def pace_accepting(self) -> None:
        """Between events: stop accepting at ``worker_connections`` (as gthread), and accept
        again once that allows and a thread is free (:meth:`accept` stops when none is). The
        listeners stay registered while threads are busy until a connection actually arrives:
        no register/unregister per request under a steady keep-alive load."""
        if self._accepting:
            if self.nr_conns >= self.worker_connections:
                self.set_accept_enabled(False)
        elif self._may_accept():
            self.ahead = None  # if it still waits, the listener hears it at once
            self.set_accept_enabled(True)

    def accept(self, listener: Any) -> None:
        if not self._may_accept():
            if self.ahead is None:
                self.ahead = self.busy  # its turn comes once these have finished
            self.set_accept_enabled(False)  # left in the queue: a sibling with a free thread
            return  # takes it, or this worker in its turn (_admit_the_waiting)
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self._take(listener, client_sock, client_addr)

    def _may_accept(self) -> bool:
        return may_accept(self.nr_conns, self.worker_connections, self.busy, self.cfg.threads)

    def _admit_the_waiting(self) -> None:
        """A request finished: take the connection left in the listen queue if its turn has
        come (:func:`admits_the_waiting`; a sibling may have taken it), then listen again, so
        that the next one is judged as it arrives."""
        if not admits_the_waiting(
            self.ahead, self.nr_conns, self.worker_connections, self.busy, self.cfg.threads
        ):
            return
        self.ahead = None
        for listener in self.sockets:  # a sibling may have taken it: then none
            if self._take_waiting(listener):
                break
        self.set_accept_enabled(True)

    def queue_orphaned(self) -> bool:
        """Whether the listen queue has no one left to accept from it after this worker (the
        master stopping, or gone): for a subclass to say."""
        return False

    def _take_the_queue(self) -> None:
        """Accept what waits in the listen queue, to serve it in the drain. It arrived while
        every thread was busy (:func:`may_accept`); once the master stops, the last copy of a
        listener to close would reset it, where gthread would have accepted and served it."""
        for listener in self.sockets:
            while self.nr_conns < self.worker_connections and self._take_waiting(listener):
                pass

    def _take_waiting(self, listener: Any) -> bool:
        """Take the oldest connection waiting in *listener*'s queue, if any (none left, or the
        listener gone: False)."""
        with contextlib.suppress(OSError):
            listener.setblocking(False)
        try:
            client_sock, client_addr = listener.accept()
        except OSError:  # nothing left (EAGAIN), or the listener is gone
            return False
        self._take(listener, client_sock, client_addr)
        return True

    def _take(self, listener: Any, client_sock: Any, client_addr: Any) -> None:
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = _TrackedConn(
            self.cfg, client_sock, client_addr, listener.getsockname(), self.tracker
        )
        self.enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        """Hand *conn* to the thread pool: it was just accepted, or a request arrived on it
        while it was kept alive. It counts as active from now, not once a thread reads it:
        while every thread is busy (the only one, with a slow request) it waits in the pool's
        queue, maybe past ``keepalive``, and a drain must answer it, not close it as idle."""
        self.tracker.request_started(conn)
        super().enqueue_req(conn)
        self.busy += 1  # once submitted: finish_request (on this thread, later) counts it back

    def handle_request(self, req: Any, conn: Any) -> bool:
        try:
            return super().handle_request(req, conn)
        finally:
            self.tracker.request_finished(conn)  # idle (kept alive) until the next request

    def finish_request(self, conn: Any, fs: Any) -> None:
        """A request left the pool: count it back, put its connection where it goes
        (:meth:`_finish`), and give a connection left in the listen queue its turn."""
        self.busy -= 1
        if self.ahead is not None:
            self.ahead -= 1
        try:
            self._finish(conn, fs)
        finally:
            if self.alive:
                self._admit_the_waiting()

    def _finish(self, conn: Any, fs: Any) -> None:
        """gthread's, without the 2 s stop linger: a kept-alive connection stays for its
        whole ``keepalive`` (a request on it during a drain gets ``Connection: close``)."""
        try:
            result = fs.result() if not fs.cancelled() else False
            if result is _DEFER:
                conn.sock.setblocking(False)
                conn.timeout = time.monotonic() + self.cfg.keepalive
                self.pending_conns.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
                )
            elif result:
                buffered = getattr(getattr(conn.parser, "unreader", None), "buf", None)
                if buffered is not None and buffered.getvalue():
                    self.enqueue_req(conn)  # the next request was read ahead already
                    return
                conn.sock.setblocking(False)
                conn.set_timeout()
                self.keepalived_conns.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
                )
            else:
                self.nr_conns -= 1
                conn.close(graceful=True)
        except Exception:
            self.nr_conns -= 1
            conn.close()

    # -- drain ------------------------------------------------------------------------------------
    def _murder_idle(self) -> None:
        self.murder_keepalived()
        if hasattr(self, "murder_pending"):  # gunicorn >= 25.3
            self.murder_pending()

    def drain(self, who: str) -> None:
        """Stop accepting (close our listener copies, never shutdown()), finish what this
        worker holds, log one line (about *who*: ``worker PID (generation G)``); blocks up to
        ``graceful_timeout``."""
        self.alive = False
        reason = self._stop_reason or (
            "max_requests reached" if self.nr >= self.max_requests else "stop"
        )
        if self.queue_orphaned():
            self._take_the_queue()
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        self.stopped_accepting()
        self.tracker.begin_drain()
        reports: list[Any] = []
        drainer = threading.Thread(
            target=lambda: reports.append(self.tracker.drain(float(self.cfg.graceful_timeout))),
            name="grace-drain",
            daemon=True,
        )
        drainer.start()
        while drainer.is_alive():
            self.notify()
            self.wait_for_and_dispatch_events(timeout=POLL)
            self._murder_idle()
        drainer.join()
        # still counted: their handler threads have not noticed the cut yet (not cut twice)
        inside_the_app = sum(self.tracker.counts())
        while self.keepalived_conns:  # only after the deadline: everything else is closed
            conn = self.keepalived_conns.popleft()
            with contextlib.suppress(Exception):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        report = reports[0]
        self.log.info(
            "grace_plugins: %s drained %s connections in %d ms (%s; %s requests served, %s idle"
            " closed, %s cut at graceful_timeout)",
            who,
            report.connections,
            report.elapsed_ms,
            reason,
            self.nr,
            report.idle_closed,
            report.closed_at_deadline,
        )
        if report.closed_at_deadline or inside_the_app:
            # Request threads still inside the app would hold the exit: do not wait for them.
            threading.Thread(target=_exit_soon, daemon=True).start()


def _exit_soon() -> None:
    time.sleep(1.0)
    os._exit(0)
