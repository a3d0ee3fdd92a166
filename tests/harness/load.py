"""Client threads that load a server across upgrades, bounded in time and count.

Kinds of client (each a thread):

* ``fresh``: a new connection per request;
* ``keepalive``: one HTTP/1.1 connection reused, never retrying: a failed request counts, then
  a new connection is opened (as it is when the server said ``Connection: close``);
* ``idle``: like ``keepalive``, but each connection sits idle ``idle_seconds`` between two
  requests, so upgrades happen while it is idle; connections the server announced closing are
  counted in ``reconnects``;
* ``slow``: requests that sleep ``slow_seconds`` server-side, in flight across upgrades.

Every outcome goes to :meth:`LoadEngine.record` (one :class:`Outcome`); :class:`Load` (tests)
sums them in a :class:`LoadReport` (with the requests sent on a kept-alive connection, and
those of them that met a closed connection: :attr:`LoadReport.stale`), the benchmark keeps
each as a timeline sample.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

from tests.harness.client import Response, classify, classify_response, read_response


@dataclass
class Outcome:
    """One request as the client saw it (times from ``time.monotonic()``)."""

    kind: str  # fresh, keepalive, idle, slow
    start: float
    end: float
    response: Response | None = None
    failure: str = ""  # "" or one of client.FAILURE_KINDS
    detail: str = ""
    #: sent on a connection an earlier request already used (keep-alive), not a fresh one
    reused: bool = False


class LoadEngine:
    """The client threads; subclasses say what to do with each :class:`Outcome`."""

    def __init__(
        self,
        port: int,
        *,
        fresh: int = 2,
        keepalive: int = 2,
        slow: int = 1,
        idle: int = 0,
        slow_seconds: float = 1.0,
        idle_seconds: float = 2.0,
        keepalive_pause: float = 0.0,
        path: str = "/hello",
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        slow_timeout: float | None = None,
        failure_pause: float = 0.0,
        max_seconds: float = 120.0,
        max_requests: int = 200_000,
    ) -> None:
        self.port, self.host, self.path = port, host, path
        self.slow_seconds = slow_seconds
        self.idle_seconds = idle_seconds
        self.keepalive_pause = keepalive_pause
        self.timeout = timeout
        self.slow_timeout = slow_timeout if slow_timeout is not None else timeout + slow_seconds
        self.failure_pause = failure_pause
        self.max_seconds = max_seconds
        self._max_requests = max_requests
        self._done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = (
            [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
            + [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]
            + [threading.Thread(target=self._idle, daemon=True) for _ in range(idle)]
            + [threading.Thread(target=self._slow, daemon=True) for _ in range(slow)]
        )

    # -- what subclasses provide -----------------------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        """Called (under the engine's lock) for every request."""

    def slow_started(self) -> None:
        """Called (under the lock) as a slow request starts."""

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the clients: each finishes (or times out) its request in flight; bounded."""
        self._stop.set()
        limit = time.monotonic() + max(self.timeout, self.slow_timeout) + self.idle_seconds + 10
        for thread in self._threads:
            thread.join(max(0.1, limit - time.monotonic()))
        stuck = [t for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"{len(stuck)} client threads still running after stop()")

    def _running(self) -> bool:
        return (
            not self._stop.is_set()
            and time.monotonic() < self._deadline
            and self._done < self._max_requests
        )

    def _add(
        self,
        kind: str,
        start: float,
        resp: Response | None,
        exc: BaseException | None,
        reused: bool = False,
    ) -> Outcome:
        end = time.monotonic()
        if exc is not None:
            outcome = Outcome(kind, start, end, None, classify(exc), repr(exc)[:160], reused)
        else:
            assert resp is not None
            failure = classify_response(resp)
            detail = f"{resp.status} {resp.body[:80]!r}" if failure else ""
            outcome = Outcome(kind, start, end, resp, failure, detail, reused)
        with self._lock:
            self._done += 1
            self.record(outcome)
        if outcome.failure and self.failure_pause:
            self._stop.wait(self.failure_pause)  # as a real client would; keeps counts comparable
        return outcome

    def _get(self, kind: str, path: str, timeout: float) -> Outcome:
        start = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp, _ = read_response(conn)
        except Exception as exc:
            return self._add(kind, start, None, exc)
        finally:
            conn.close()
        return self._add(kind, start, resp, None)

    # -- the clients ---------------------------------------------------------------------------
    def _fresh(self) -> None:
        while self._running():
            self._get("fresh", self.path, self.timeout)

    def _reuse(self, kind: str, pause: float) -> None:
        conn: http.client.HTTPConnection | None = None
        used = 0  # requests already answered on *conn*
        try:
            while self._running():
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    used = 0
                start = time.monotonic()
                try:
                    conn.request("GET", self.path)
                    resp, closing = read_response(conn)
                except Exception as exc:  # no retry: every failure counts
                    self._add(kind, start, None, exc, reused=used > 0)
                    conn.close()
                    conn = None
                    continue
                self._add(kind, start, resp, None, reused=used > 0)
                used += 1
                if closing:
                    self.reconnected(kind)
                    conn.close()
                    conn = None
                if pause:
                    self._stop.wait(pause)
        finally:
            if conn is not None:
                conn.close()

    def reconnected(self, kind: str) -> None:
        """The server said ``Connection: close``: the client opens a new connection."""

    def _keepalive(self) -> None:
        self._reuse("keepalive", self.keepalive_pause)

    def _idle(self) -> None:
        self._reuse("idle", self.idle_seconds)

    def _slow(self) -> None:
        path = f"{self.path}{'&' if '?' in self.path else '?'}sleep={self.slow_seconds}"
        while self._running():
            with self._lock:
                self.slow_started()
            self._get("slow", path, self.slow_timeout)


@dataclass
class LoadReport:
    requests: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    slow_started: int = 0
    slow_completed: int = 0
    reconnects: int = 0
    #: requests sent on a kept-alive connection (one an earlier request used), and those of
    #: them that met a closed connection: the failures a client that does not retry sees
    reused: int = 0
    stale: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for kind, _ in self.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        return (
            f"{self.requests} requests {self.by_kind}, {len(self.failures)} failed {kinds}, slow"
            f" {self.slow_completed}/{self.slow_started}, {self.reconnects} reconnects,"
            f" {self.reused} on kept-alive connections ({self.stale} met a closed one);"
            f" first failures: {self.failures[:5]}"
        )


class Load(LoadEngine):
    """The tests' load: a context manager summing outcomes in :attr:`report`."""

    def __init__(self, port: int, **options) -> None:
        slow_seconds = options.get("slow_seconds", 1.0)
        options.setdefault("slow_timeout", 10.0 + slow_seconds * 2)
        super().__init__(port, **options)
        self.report = LoadReport()

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, outcome: Outcome) -> None:
        report = self.report
        report.requests += 1
        report.by_kind[outcome.kind] = report.by_kind.get(outcome.kind, 0) + 1
        report.reused += outcome.reused
        if outcome.failure:
            report.stale += outcome.reused
            report.failures.append((outcome.failure, f"{outcome.kind}: {outcome.detail}"))
            return
        assert outcome.response is not None
        report.versions.add(outcome.response.version)
        report.pids.add(outcome.response.pid)
        if outcome.kind == "slow" and outcome.response.status == 200:
            report.slow_completed += 1

    def slow_started(self) -> None:
        self.report.slow_started += 1

    def reconnected(self, kind: str) -> None:
        with self._lock:
            self.report.reconnects += 1

    def stop(self) -> LoadReport:  # type: ignore[override]
        """Stop the clients (each finishes its request in flight, bounded) and report."""
        super().stop()
        return self.report
