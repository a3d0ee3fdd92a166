"""Werkzeug's own server classes, serving on the listener a generation inherited.

Nothing here speaks HTTP: requests are handled by :class:`werkzeug.serving.WSGIRequestHandler`
(or the user's ``request_handler``) inside :class:`~werkzeug.serving.BaseWSGIServer`,
:class:`~werkzeug.serving.ThreadedWSGIServer` or :class:`~werkzeug.serving.ForkingWSGIServer`,
exactly as ``run_simple`` would. What this module adds:

* the core's tracking mixins, first in the bases, so a drain waits for every accepted
  connection (werkzeug's request threads are daemons nobody joins);
* the server is built with werkzeug's ``fd=`` argument, which duplicates the listener
  (``socket.fromfd``); the duplicate belongs to the server and is closed by ``server_close``,
  the original by the core, so no copy outlives the serve loop;
* with ``processes > 1`` each request runs in a forked child that the tracker cannot see:
  after the loop stops, :func:`wait_for_children` waits for them up to the drain deadline
  (``socketserver`` would wait without a limit) and kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any

from werkzeug.serving import (
    BaseWSGIServer,
    ForkingWSGIServer,
    ThreadedWSGIServer,
    WSGIRequestHandler,
)

from grace_plugins.drain import ConnectionTracker
from grace_plugins.tracked_server import TrackedHandlerMixin, TrackedServerMixin

#: How often the serve loop looks at its shutdown flag: a stop takes at most this long.
POLL_INTERVAL = 0.1


class HotBaseWSGIServer(TrackedServerMixin, BaseWSGIServer):
    """One request at a time, as ``run_simple(threaded=False, processes=1)``."""


class HotThreadedWSGIServer(TrackedServerMixin, ThreadedWSGIServer):
    """A thread per request, as ``run_simple(threaded=True)``."""


class HotForkingWSGIServer(TrackedServerMixin, ForkingWSGIServer):
    """A forked process per request, as ``run_simple(processes=N)``."""

    #: ``server_close`` must not wait for the children without a limit: the drain does, bounded.
    block_on_close = False

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the forked child only. The parent's tracker lock may have been held by
        # another thread at fork time; a child-local tracker cannot deadlock on it.
        parent = self.tracker
        self.tracker = ConnectionTracker(parent.keepalive_timeout)
        self.tracker.accepted(request)
        if parent.draining:
            self.tracker.begin_drain()
        super().finish_request(request, client_address)


def tracked_handler(handler: type[WSGIRequestHandler] | None) -> type[WSGIRequestHandler]:
    """Return a subclass of *handler* (default :class:`WSGIRequestHandler`) that reports its
    requests to the tracker and says ``Connection: close`` during a drain."""
    base = handler or WSGIRequestHandler
    # Werkzeug switches a handler to HTTP/1.1 unless the class itself sets protocol_version:
    # keep the user's own choice visible on the subclass.
    own = (
        {"protocol_version": vars(base)["protocol_version"]}
        if "protocol_version" in vars(base)
        else {}
    )
    return type(f"Hot{base.__name__}", (TrackedHandlerMixin, base), own)


def werkzeug_host(listener: socket.socket) -> tuple[str, int]:
    """The host and port to give werkzeug so it picks the listener's own address family."""
    if listener.family == socket.AF_UNIX:
        path = listener.getsockname()
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        return f"unix://{path}", 0
    host, port = listener.getsockname()[:2]
    return host, port


def make_hot_server(
    listener: socket.socket,
    app: Any,
    tracker: ConnectionTracker,
    *,
    threaded: bool = False,
    processes: int = 1,
    request_handler: type[WSGIRequestHandler] | None = None,
    passthrough_errors: bool = False,
    ssl_context: Any = None,
) -> BaseWSGIServer:
    """Build werkzeug's server for these options on *listener* (a copy of it; the caller keeps
    and closes the original). Does not block.

    :raises ValueError: for ``threaded`` with ``processes > 1`` (as werkzeug does).
    :raises OSError, ssl.SSLError: when the TLS certificate cannot be loaded.
    """
    if threaded and processes > 1:
        raise ValueError("Cannot have a multi-thread and multi-process server.")
    host, port = werkzeug_host(listener)
    handler = tracked_handler(request_handler)
    fd = listener.fileno()
    server: BaseWSGIServer
    if threaded:
        server = HotThreadedWSGIServer(
            host, port, app, handler, passthrough_errors, ssl_context, fd=fd
        )
    elif processes > 1:
        server = HotForkingWSGIServer(
            host, port, app, processes, handler, passthrough_errors, ssl_context, fd=fd
        )
    else:
        server = HotBaseWSGIServer(host, port, app, handler, passthrough_errors, ssl_context, fd=fd)
    server.tracker = tracker
    # TLS wrapping re-applies a blocking timeout to the listener, clearing O_NONBLOCK on the
    # file every generation shares; a lost accept() race would then block this serve loop.
    server.socket.setblocking(False)
    return server


def wait_for_children(server: BaseWSGIServer, timeout: float) -> int:
    """Wait up to *timeout* seconds for the forked request processes of a
    ``processes > 1`` server; kill those still running then. Blocks; returns how many were
    killed (0 for servers that do not fork)."""
    children: set[int] = getattr(server, "active_children", None) or set()
    deadline = time.monotonic() + timeout
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if _reaped(pid, os.WNOHANG):
                children.discard(pid)
        if children:
            time.sleep(0.02)
    killed = 0
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
        _reaped(pid, 0)
        children.discard(pid)
    return killed


def _reaped(pid: int, flags: int) -> bool:
    try:
        done, _ = os.waitpid(pid, flags)
    except ChildProcessError:
        return True
    return done != 0
