"""One HTTP GET, its answer, and the one classifier of client failures (tests and bench)."""

from __future__ import annotations

import http.client
import re
import socket
from dataclasses import dataclass

#: Every kind :func:`classify` may answer, in the order reports list them.
FAILURE_KINDS = ("refused", "reset", "timeout", "5xx", "truncated", "other")
BODY = re.compile(r"ospid:(\d+) version:(\S+)")


@dataclass
class Response:
    status: int
    body: str
    headers: dict[str, str]

    @property
    def pid(self) -> int:
        found = re.search(r"ospid:(\d+)", self.body)
        return int(found.group(1)) if found else -1

    @property
    def version(self) -> str:
        found = re.search(r"version:(\S+)", self.body)
        return found.group(1) if found else ""


def read_response(conn: http.client.HTTPConnection) -> tuple[Response, bool]:
    """Read the answer to the request sent on *conn*: (response, server will close)."""
    resp = conn.getresponse()
    body = resp.read().decode("utf-8", "replace")
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return Response(resp.status, body, headers), bool(resp.will_close)


def http_get(
    port: int, path: str = "/hello", timeout: float = 10.0, host: str = "127.0.0.1"
) -> Response:
    """One GET on a fresh connection; blocks at most about *timeout* s per step."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return read_response(conn)[0]
    finally:
        conn.close()


def classify(exc: BaseException) -> str:
    """Name a client failure: refused, reset, timeout, truncated or other."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "truncated"
    return "other"


def classify_response(resp: Response) -> str:
    """ "" for a good answer from a server under test, else "5xx" (an error or a foreign body)."""
    return "5xx" if resp.status >= 500 or "ospid:" not in resp.body else ""
