"""Connection tracking for servers built on :mod:`socketserver` / :mod:`http.server`.

Werkzeug's development server and Django's ``runserver`` both derive from
``http.server.HTTPServer``. Their threaded variants use daemon threads that ``socketserver``
does not record, so ``server_close()`` waits for nothing: a generation that simply exited would
kill its in-flight requests. These mixins (stdlib only, no framework) report every connection
to a :class:`~grace_plugins.drain.ConnectionTracker`:

* :class:`TrackedServerMixin` counts a connection in ``process_request`` -- in the accept loop,
  before the handler thread exists -- and forgets it in ``close_request``;
* :class:`TrackedHandlerMixin` marks requests active/idle and, during a drain, makes every
  response say ``Connection: close``.
"""

from __future__ import annotations

import socket
from typing import Any

from grace_plugins.drain import ConnectionTracker


class TrackedServerMixin:
    """Mix in before the ``socketserver`` server class; set :attr:`tracker` before serving."""

    tracker: ConnectionTracker

    def get_request(self) -> tuple[Any, Any]:
        request, address = super().get_request()  # type: ignore[misc]
        # The shared listener is non-blocking; where accept() passes that on (BSD, macOS),
        # give the handler the blocking socket it expects.
        if isinstance(request, socket.socket) and request.gettimeout() == 0.0:
            request.setblocking(True)
        return request, address

    def process_request(self, request: Any, client_address: Any) -> None:
        self.tracker.accepted(request, request if isinstance(request, socket.socket) else None)
        super().process_request(request, client_address)  # type: ignore[misc]

    def close_request(self, request: Any) -> None:
        self.tracker.closed(request)
        super().close_request(request)  # type: ignore[misc]


class TrackedHandlerMixin:
    """Mix in before an ``http.server.BaseHTTPRequestHandler`` subclass."""

    server: Any
    request: Any
    close_connection: bool
    _grace_close_sent = False

    def parse_request(self) -> bool:
        self.server.tracker.request_started(self.request)
        return super().parse_request()  # type: ignore[misc]

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()  # type: ignore[misc]
        finally:
            self.server.tracker.request_finished(self.request)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and self.server.tracker.draining:
            value = "close"
            self._grace_close_sent = True
        super().send_header(keyword, value)  # type: ignore[misc]

    def end_headers(self) -> None:
        if self.server.tracker.draining and not self._grace_close_sent:
            super().send_header("Connection", "close")  # type: ignore[misc]
        self._grace_close_sent = False
        super().end_headers()  # type: ignore[misc]
