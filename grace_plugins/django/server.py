"""Django's own development server classes, serving on the listener a generation inherited.

``runserver`` builds its server in :func:`django.core.servers.basehttp.run` from the command's
``server_cls``; ``runhot`` keeps that path (so checks, the static files handler and the banner
stay Django's) and only hands it the class made by :func:`hot_server_class`, which

* adopts the inherited listener instead of binding (no re-bind: the port never closes);
* puts the core's :class:`~grace_plugins.tracked_server.TrackedServerMixin` first in the
  bases, so a drain waits for every accepted connection (Django's request threads are daemons
  nobody joins), and adds threading itself, *after* the tracking mixin (``basehttp.run`` would
  put ``ThreadingMixIn`` in front of it, where the accept loop never reaches the tracker);
* serves requests with Django's :class:`~django.core.servers.basehttp.WSGIRequestHandler`,
  whose responses say ``Connection: close`` while the generation drains. Django writes
  response headers through wsgiref's ``ServerHandler``, not ``send_header``, so that is where
  the header is added;
* calls ``on_serving(server)`` on the serving thread just before the accept loop: that is
  where the generation reports ready.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from django.core.servers.basehttp import ServerHandler, WSGIRequestHandler, WSGIServer

from grace_plugins.drain import ConnectionTracker
from grace_plugins.tracked_server import TrackedHandlerMixin, TrackedServerMixin

#: How often the accept loop looks at its stop flag (Django's default is 0.5 s).
POLL_INTERVAL = 0.1


class HotServerHandler(ServerHandler):
    """Django's response writer; says ``Connection: close`` while the generation drains."""

    def cleanup_headers(self) -> None:
        # Set before Django's own cleanup, which then marks the connection for closing.
        if self.request_handler.server.tracker.draining:
            self.headers["Connection"] = "close"
        super().cleanup_headers()


class _DjangoRequestHandler(WSGIRequestHandler):
    """Django's handler, writing its responses with :class:`HotServerHandler`."""

    def handle_one_request(self) -> None:
        # Django's WSGIRequestHandler.handle_one_request (identical in 4.2 and 5.2), with the
        # response writer class as the only change.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return

        if not self.parse_request():  # An error code has been sent, just exit
            return

        handler = HotServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ())
        handler.request_handler = self  # backpointer for logging & connection closing
        handler.run(self.server.get_app())


class HotRequestHandler(TrackedHandlerMixin, _DjangoRequestHandler):
    """Reports each request to the tracker (active vs idle keep-alive connection)."""


class _ListenerMixin:
    """Adopts the class's ``listener`` where ``socketserver`` would bind a new socket."""

    listener: socket.socket
    on_serving: Callable[[Any], None]
    socket: socket.socket
    server_address: Any
    server_name: str
    server_port: int

    def __init__(
        self, server_address: Any, RequestHandlerClass: Any, *args: Any, **kwargs: Any
    ) -> None:
        # basehttp.run passes the command's address and Django's handler: keep the address
        # for nothing, use the tracked handler, and adopt the listener instead of binding.
        self.address_family = self.listener.family
        kwargs["bind_and_activate"] = False
        super().__init__(server_address, HotRequestHandler, *args, **kwargs)  # type: ignore[call-arg]
        self.socket.close()
        self.socket = self.listener
        self.server_address = self.listener.getsockname()
        if self.listener.family == socket.AF_UNIX:
            self.server_name, self.server_port = "localhost", 0
        else:
            # What HTTPServer.server_bind would have set (a reverse lookup, as runserver does).
            host, self.server_port = self.server_address[:2]
            self.server_name = socket.getfqdn(host)
        self.setup_environ()  # type: ignore[attr-defined]

    def get_request(self) -> tuple[Any, Any]:
        request, address = super().get_request()  # type: ignore[misc]
        if not address:  # a Unix socket peer: Django's handler reads client_address[0]
            address = ("", 0)
        return request, address

    def serve_forever(self, poll_interval: float = POLL_INTERVAL) -> None:
        self.on_serving(self)
        super().serve_forever(POLL_INTERVAL)  # type: ignore[misc]


def hot_server_class(
    base: type[WSGIServer],
    *,
    listener: socket.socket,
    tracker: ConnectionTracker,
    threaded: bool,
    on_serving: Callable[[WSGIServer], None],
) -> type[WSGIServer]:
    """Return a subclass of Django's *base* server class (the command's ``server_cls``) that
    serves on *listener*, reports to *tracker* and, if *threaded*, uses a daemon thread per
    connection as ``runserver`` does. Give it to ``basehttp.run`` with ``threading=False``.
    Does not block."""
    bases: tuple[type, ...] = (TrackedServerMixin, _ListenerMixin)
    if threaded:
        bases += (socketserver.ThreadingMixIn,)
    attributes = {
        "listener": listener,
        "tracker": tracker,
        "on_serving": staticmethod(on_serving),
        "daemon_threads": True,
    }
    return type("WSGIServer", (*bases, base), attributes)


def stop_soon(server: socketserver.BaseServer) -> Callable[[], None]:
    """Return a stop callback that never blocks its caller: ``server.shutdown()`` waits for
    the accept loop to end, which deadlocks if called on the loop's own thread or before the
    loop runs, so it waits in a thread of its own."""

    def stop() -> None:
        threading.Thread(target=server.shutdown, name="grace-stop", daemon=True).start()

    return stop
