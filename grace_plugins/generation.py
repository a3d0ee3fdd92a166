"""The generation side: a child of the supervisor that adopts the listeners and serves the app.

:func:`run_generation` is what an adapter's entry point becomes in a child process. It

1. installs its signal handlers *first* and only then unblocks SIGHUP (blocked by the
   supervisor around the spawn), so a HUP during the app import is not lost: it becomes an
   upgrade request to the supervisor;
2. adopts and validates the listeners and the private channel;
3. calls the adapter's ``serve(context)``, which imports the app, builds a server on the
   listeners, calls :meth:`GenerationContext.ready` and serves until asked to stop;
4. drains: the listeners (this process's copies only) are closed, and the connection tracker
   waits for in-flight requests until the drain deadline, telling the supervisor how many
   connections are left (``left N``); then the process exits.

Signal handlers only queue an event; a control thread acts on it (a handler running on the
thread that runs ``serve_forever`` must never call ``shutdown()`` on it: that deadlocks).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import NoReturn

from grace_plugins import channel as msg
from grace_plugins import listeners as lst
from grace_plugins.channel import Channel
from grace_plugins.drain import ConnectionTracker
from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.exit_status import exit_now, failure_status
from grace_plugins.handoff import HANDOFF_VAR, Handoff
from grace_plugins.log import configure
from grace_plugins.preload import write_report
from grace_plugins.process import process_start_time
from grace_plugins.readycheck import WSGIApp, check_ready, time_for_check
from grace_plugins.watch_report import Serving, WatchReporter

_STOP = "stop"
_CUT = "cut"
_UPGRADE = "upgrade"


class GenerationContext:
    """What an adapter's ``serve`` function gets: listeners, tracker, and the handover calls."""

    def __init__(
        self,
        handoff: Handoff,
        listeners: list[socket.socket],
        channel: Channel,
    ) -> None:
        self.generation = handoff.generation
        self.supervisor_pid = handoff.supervisor_pid
        #: The grace settings, as the supervisor parsed them (never re-read from argv).
        self.options = handoff.options
        self.listeners = listeners
        self.listener_names = [name for name, _ in handoff.listeners]
        self.tracker = ConnectionTracker(keepalive_timeout=self.options.keepalive_timeout)
        self.logger = configure(f"gen {handoff.generation}")
        self.started = _process_started()
        self._channel = channel
        self._send_lock = threading.Lock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._stop_requested = threading.Event()
        self._is_ready = False
        self._plug: tuple[int, int] | None = None
        self._copies: list[socket.socket] = []
        self._watch: WatchReporter | None = None

    # -- for adapters -------------------------------------------------------------------------
    def ready(self) -> None:
        """Tell the supervisor the app is imported and serving; call once, when it really can.

        Non-blocking in practice (one short write on a local socket).
        """
        if self._is_ready:
            return
        self._is_ready = True
        self._keep_listeners_nonblocking()
        write_report(self.supervisor_pid)
        self._send(msg.READY)
        if self._watch is not None:
            self._watch.start()

    def report_loaded(
        self, serving: Serving, *, extra_files: Iterable[str] = (), exclude: Iterable[str] = ()
    ) -> None:
        """With the reloader on, call it before loading the app: the supervisor's file watcher
        will watch what ``serving(since)`` says once this generation is ready (and again when
        it imports more), or, if the app fails to load, what it tried."""
        send = self._send
        self._watch = WatchReporter(
            send, serving, process_start_time(), extra_files=extra_files, exclude=exclude
        )

    def check_ready(
        self, app: WSGIApp, path: str, *, host: str, port: int, scheme: str = "http"
    ) -> None:
        """Run the ready check (:func:`grace_plugins.readycheck.check_ready`) before
        :meth:`ready`, bounded by what is left of the ready timeout (less a margin, so that
        the generation, not the supervisor's deadline, says what the check got).

        :raises NotReady: the check failed; raising it from ``serve`` rolls the upgrade back.
        """
        began = time.monotonic()
        timeout = time_for_check(self.started + self.options.ready_timeout, began)
        status = check_ready(app, path, host=host, port=port, timeout=timeout, scheme=scheme)
        self.logger.info(
            "ready check GET %s answered %d in %d ms",
            path,
            status,
            (time.monotonic() - began) * 1000,
        )

    def request_upgrade(self, reason: str) -> None:
        """Ask the supervisor to start the next generation (a file changed, a HUP arrived)."""
        self.logger.info("asking the supervisor for an upgrade (%s)", reason)
        self._send(msg.UPGRADE)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Register how to stop the serve loop (e.g. ``server.shutdown``). It runs on a thread of
        its own, never the serving thread, so it may block until the loop ends; if a stop was
        already requested, it starts at once."""
        self._stop_callbacks.append(callback)
        if self._stop_requested.is_set():
            _start_quietly(callback)

    @property
    def stopping(self) -> bool:
        """True once the supervisor (or a signal) asked this generation to drain."""
        return self._stop_requested.is_set()

    def add_listener_copy(self, sock: socket.socket) -> None:
        """Register a server's own copy of a listener (a framework that duplicates the fd, as
        werkzeug does) so that :meth:`stop_accepting` stops it too, and its blocking mode is
        checked at ready."""
        self._copies.append(sock)

    def _keep_listeners_nonblocking(self) -> None:
        """Restore ``O_NONBLOCK`` if the framework cleared it (``SSLSocket`` does, re-applying
        a blocking timeout). The flag is shared by every process holding the listener: left
        blocking, a generation that loses an ``accept()`` race sits in ``accept()`` where no
        stop request reaches it."""
        if self._stop_requested.is_set():
            return  # stopped before ready: the listener fds are a pipe's now (stop_accepting)
        for sock in [*self.listeners, *self._copies]:
            fd = sock.fileno()
            if fd >= 0 and os.get_blocking(fd):
                os.set_blocking(fd, False)
                self.logger.warning(
                    "the server made listener %s blocking; made it non-blocking again",
                    lst.name_of(sock),
                )

    def stop_accepting(self) -> None:
        """Stop accepting now, from any thread: atomically replace this process's listener fds
        with the read end of a pipe that never becomes readable (``dup2``).

        The shared listening socket loses only this process's reference: the supervisor and
        the new generation keep accepting, and nothing is ``shutdown()``. Doing it by ``dup2``
        rather than ``close`` means a serve loop still polling the old fd number sees a quiet
        fd instead of a number the kernel may hand to some other file. The serve loop ends at
        its own pace; new connections already go to the new generation.
        """
        if self._plug is not None:
            return
        self._plug = os.pipe()  # the write end stays open: the read end is never readable
        for sock in [*self.listeners, *self._copies]:
            fd = sock.fileno()
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.dup2(self._plug[0], fd, inheritable=False)

    def close_listeners(self) -> None:
        """Close this process's copies of the listeners: stop accepting, never ``shutdown()``
        (on Linux that would stop the shared socket for every generation)."""
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.close()

    # -- for the runtime ----------------------------------------------------------------------
    def _send(self, message: str) -> None:
        with self._send_lock:
            self._channel.send(message)

    def _send_left(self, count: int) -> None:
        """Tell the supervisor how many connections the drain still holds (``status``)."""
        self._send(msg.left_message(count))

    def _cut_short(self) -> None:
        self._stop("asked by the supervisor")
        self.logger.info("drain cut short by the supervisor: closing what is left")
        self.tracker.cut_short()

    def _stop(self, reason: str) -> None:
        if self._stop_requested.is_set():
            return
        self._stop_requested.set()
        if self._watch is not None:
            self._watch.stop()
        self.stop_accepting()
        self._send(msg.STOPPED)  # the upgrade's outcome waits for it (outcome_hold)
        self.logger.info("draining (%s)", reason)
        self.tracker.begin_drain()
        for callback in list(self._stop_callbacks):
            _start_quietly(callback)


def _process_started() -> float:
    """When this process began (its exec, or its fork from the warm-start template), on the
    ``time.monotonic()`` scale: the supervisor's ready deadline runs from the spawn, and an
    interpreter and a framework starting on a busy machine can take longer than the ready
    check's margin before this code runs."""
    now = time.monotonic()
    began = process_start_time()
    return now if began is None else min(now, now - (time.time() - began))


def _start_quietly(callback: Callable[[], None]) -> None:
    """Run a stop callback on its own daemon thread: ``server.shutdown()`` blocks until the
    serve loop ends, and must block neither the control thread nor the serving thread."""

    def run() -> None:
        try:
            callback()
        except Exception:  # a failing stop hook must not keep the generation alive
            traceback.print_exc()

    threading.Thread(target=run, name="grace-stop", daemon=True).start()


def _install_signals(events: queue.SimpleQueue[tuple[str, str]]) -> None:
    def on_hup(signum: int, frame: object) -> None:
        events.put((_UPGRADE, "SIGHUP reached the generation"))

    def on_stop(signum: int, frame: object) -> None:
        events.put((_STOP, signal.Signals(signum).name))

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _read_channel(channel: Channel, events: queue.SimpleQueue[tuple[str, str]]) -> None:
    channel.sock.setblocking(True)
    orders = 0
    while True:
        lines = channel.receive()
        if lines is None:
            events.put((_STOP, "the supervisor is gone"))
            return
        for line in lines:
            if line == msg.DRAIN:  # a second order cuts the drain short (too many draining)
                orders += 1
                events.put((_STOP, "asked by the supervisor") if orders == 1 else (_CUT, ""))


def _control(context: GenerationContext, events: queue.SimpleQueue[tuple[str, str]]) -> None:
    while True:
        kind, reason = events.get()
        if kind == _UPGRADE and not context.stopping:
            context.request_upgrade(reason)
        elif kind == _STOP:
            context._stop(reason)
        elif kind == _CUT:
            context._cut_short()


def run_generation(handoff: Handoff, serve: Callable[[GenerationContext], None]) -> NoReturn:
    """Serve as generation ``handoff.generation`` until drained, then exit. Never returns.

    Exits 0 after a drain, :data:`ExitCode.APP_LOAD_ERROR` when ``serve`` fails before
    ready, 1 when it fails after, and :data:`ExitCode.USAGE` for an invalid inherited fd.
    """
    events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    _install_signals(events)
    logger = configure(f"gen {handoff.generation}")
    try:
        lst.check_channel(handoff.channel_fd, HANDOFF_VAR)
        channel = Channel.from_fd(handoff.channel_fd)
        sockets = [lst.adopt(fd, name, HANDOFF_VAR) for name, fd in handoff.listeners]
    except (GraceError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        os._exit(ExitCode.USAGE)
    context = GenerationContext(handoff, sockets, channel)
    threading.Thread(target=_read_channel, args=(channel, events), daemon=True).start()
    threading.Thread(target=_control, args=(context, events), daemon=True).start()
    try:
        serve(context)
    except BaseException as exc:  # the app failed to import, or the server crashed
        if not (isinstance(exc, SystemExit) and exc.code in (0, None) and context.stopping):
            if context._watch is not None and not context._is_ready:
                context._watch.tried(exc)  # the file to fix is among them
            exit_now(failure_status(exc, context._is_ready, context.generation, logger))
    context.close_listeners()
    drain_timeout = context.options.drain_timeout
    report = context.tracker.drain(
        drain_timeout, on_left=context._send_left, left_interval=msg.LEFT_INTERVAL
    )
    logger.info(
        "generation %d drained %d connections in %d ms (%d idle closed, %d closed %s)",
        handoff.generation,
        report.connections,
        report.elapsed_ms,
        report.idle_closed,
        report.closed_at_deadline,
        "when the drain was cut short"
        if report.cut_short
        else f"at the {drain_timeout:.0f} s deadline",
    )
    exit_now(ExitCode.OK)
