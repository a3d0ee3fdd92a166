"""A long request in flight on its own connection, and which process holds it (``/proc``)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterable

from tests.harness.client import Response, read_response
from tests.harness.procfs import LINUX_PROC, holder_of
from tests.harness.server import wait_until


class LongRequest:
    """``GET PATH?sleep=N`` on its own connection, sent before the constructor returns; the
    answer is read on a thread of its own. Knows which process accepted it."""

    def __init__(self, port: int, seconds: float, path: str = "/hello") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 20)
        self.conn.request("GET", f"{path}?sleep={seconds}")
        assert self.conn.sock is not None
        self.client_port: int = self.conn.sock.getsockname()[1]
        self.result: dict[str, object] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.result["response"] = read_response(self.conn)[0]
        except Exception as exc:  # the test asserts on what happened
            self.result["error"] = repr(exc)
        finally:
            self.conn.close()

    @property
    def answered(self) -> bool:
        """True once the answer (or a failure) came back."""
        return not self.thread.is_alive()

    def held_by(self, pids: Callable[[], Iterable[int]], timeout: float = 10.0) -> int:
        """Wait until one of *pids()* holds the server side of this connection (it accepted
        the request); return that pid. Fails at once, showing what the client got, if the
        request ended before anyone was seen holding it. Without ``/proc``, a single
        candidate is taken as the holder (the caller relies on the request's own timing)."""
        if not LINUX_PROC and len(candidates := list(pids())) == 1:
            return candidates[0]

        def holder() -> int | None:
            found = holder_of(pids(), self.client_port)
            if found is None and self.answered:
                raise AssertionError(f"the request ended before it was seen held: {self.result}")
            return found

        return int(wait_until(holder, timeout, "a process to hold the request"))  # type: ignore[call-overload]

    def finish(self, timeout: float) -> Response:
        """Wait for the answer; fail if none came (a failure is shown)."""
        self.thread.join(timeout)
        assert "response" in self.result, self.result or f"no answer within {timeout:g} s"
        response = self.result["response"]
        assert isinstance(response, Response)
        return response
