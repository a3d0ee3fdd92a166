"""The ready check: new code answers one request, in-process, before it takes traffic.

"Imported" is not "works": a template error, a view that raises or a setting read on the
first query pass every import and then fail every request. Before a generation (or a gunicorn
worker) reports ready, the adapter calls its own WSGI application with ``GET <path>`` through
the full stack a request takes (middleware included), no socket involved. Below 500 is ready;
500 or more, an exception or no answer in time is not, and the upgrade is rolled back like an
import error.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from grace_plugins.errors import GraceError

#: The request header that marks the check (``X-Grace-Ready-Check: 1``), so an app or its
#: logs can tell it from a client's request.
HEADER = "X-Grace-Ready-Check"
ENVIRON_KEY = "HTTP_X_GRACE_READY_CHECK"

WSGIApp = Callable[..., Iterable[bytes]]
#: Seconds before the ready deadline at which the check must have answered, so that the check's
#: own verdict ("answered 500", "did not answer within"), not the deadline, says what happened.
MARGIN = 0.5
#: The least time a check gets, however late it starts.
MINIMUM = 0.1


class NotReady(GraceError):
    """The ready check failed; the message is the one log line that says what it got."""


def host_and_port(sock: socket.socket) -> tuple[str, int]:
    """The ``Host`` a client of this listener would send: its address (``localhost`` for a
    wildcard or Unix socket, brackets for IPv6) and port."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return "localhost", 80
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        return "localhost", port
    return (f"[{host}]" if ":" in host else host), port


def ready_environ(path: str, host: str, port: int, scheme: str = "http") -> dict[str, Any]:
    """A WSGI environ for ``GET path`` as a client of ``host:port`` would send it."""
    parts = urlsplit(path)
    default_port = {"http": 80, "https": 443}[scheme]
    http_host = host if port == default_port else f"{host}:{port}"
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(parts.path, "latin-1"),
        "QUERY_STRING": parts.query,
        "SERVER_NAME": host.strip("[]"),
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": http_host,
        ENVIRON_KEY: "1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def time_for_check(deadline: float, now: float) -> float:
    """Seconds the ready check may take when the new code must be ready by *deadline*
    (both ``time.monotonic()``): what is left, less :data:`MARGIN`, and at least
    :data:`MINIMUM`. The one bound every adapter gives :func:`check_ready`."""
    return max(deadline - now - MARGIN, MINIMUM)


def check_ready(
    app: WSGIApp, path: str, *, host: str, port: int, timeout: float, scheme: str = "http"
) -> int:
    """Call *app* with ``GET path``, read the whole answer and return its status code. Blocks
    up to *timeout* s (the call runs on a daemon thread, so a hung view cannot hold the
    generation).

    :raises NotReady: for a status of 500 or more, an exception (its traceback is printed
        first, on stderr) or no complete answer within *timeout*.
    """
    what = f"ready check GET {path}"
    outcome: dict[str, Any] = {}

    def call() -> None:
        def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            outcome["status"] = status
            return lambda data: None

        try:
            body = app(ready_environ(path, host, port, scheme), start_response)
            try:
                for _ in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - reported as the verdict
            outcome["error"] = exc
            traceback.print_exc()

    worker = threading.Thread(target=call, name="grace-ready-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise NotReady(f"{what} did not answer within {timeout:.3g} s")
    if "error" in outcome:
        error = outcome["error"]
        raise NotReady(f"{what} raised {type(error).__name__}: {error}".rstrip(": "))
    status = str(outcome.get("status", ""))
    code = status.split(" ", 1)[0]
    if not code.isdigit():
        raise NotReady(f"{what} answered no status")
    if int(code) >= 500:
        raise NotReady(f"{what} answered {code}")
    return int(code)
