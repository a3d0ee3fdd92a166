"""Helpers for end-to-end tests: real processes, real sockets, bounded waits, sure cleanup.

* :class:`ServerProcess` starts a server in its own process group, collects its output, and
  waits on *lines it prints* (never on sleeps); every wait has a deadline and says what it was
  waiting for when it times out. ``close()`` stops it gracefully, then kills by process group
  (the supervisor's and each generation's, by pid), so nothing outlives a test.
* :class:`Load` runs client threads (fresh connections, keep-alive connections that do not
  retry, slow requests) for a bounded time and count, and reports every failure by kind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_LINE = r"generation (\d+) \(pid (\d+)\) ready after (\d+) ms"
LISTEN_LINE = r"serving (?:tcp:\[?[^\]\s]*\]?:(\d+)|unix:(\S+?))[,.;\s]"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll *predicate* until truthy (every 20 ms), at most *timeout* s; fail naming *what*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class ServerProcess:
    """A server under test, started in a new session (its own process group)."""

    def __init__(
        self,
        argv: Sequence[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, full_env.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        self.argv = list(argv)
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    # -- output ---------------------------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append("<EOF>")
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def mark(self) -> int:
        """The current output position, to wait for lines printed after it."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """Wait for a line matching *pattern* printed at position *after* or later."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[after:]:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._lines and self._lines[-1] == "<EOF>"):
                    tail = "\n".join(self._lines[-40:])
                    raise AssertionError(
                        f"waited {timeout:g} s for a line matching {pattern!r}; the server"
                        f" {'exited' if self._lines[-1:] == ['<EOF>'] else 'is running'}."
                        f" Last output:\n{tail}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_ready(self, timeout: float = 30.0) -> int:
        """Wait for the first generation's ready line; return the port it listens on."""
        self.wait_for(READY_LINE, timeout)
        found = self.wait_for(LISTEN_LINE, timeout)
        if found.group(1):
            self.port = int(found.group(1))
        return self.port or 0

    def generation_pids(self) -> dict[int, int]:
        """{generation number: pid} for every generation the supervisor reported."""
        pids: dict[int, int] = {}
        for found in re.finditer(r"generation (\d+) \(pid (\d+)\)", self.output()):
            pids[int(found.group(1))] = int(found.group(2))
        return pids

    # -- signals --------------------------------------------------------------------------------
    def upgrade(self, timeout: float = 30.0, sig: int = signal.SIGHUP, pid: int | None = None):
        """Send *sig* (HUP) and wait for the next generation's ready line; return its pid."""
        start = self.mark()
        os.kill(pid or self.pid, sig)
        return int(self.wait_for(READY_LINE, timeout, after=start).group(2))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the supervisor and wait for it to exit; return its exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server did not stop within {timeout:g} s. Output:\n{self.output()[-3000:]}"
            ) from None

    def close(self) -> None:
        """Make sure nothing started by this server survives (by process group, by pid)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        for pid in [self.pid, *self.generation_pids().values(), *self.extra_pids()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def extra_pids(self) -> list[int]:
        """Other process-group leaders this server printed (adapters may override)."""
        return [int(p) for p in re.findall(r"\bpid[ =:](\d+)", self.output())]

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- HTTP ---------------------------------------------------------------------------------------
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


def http_get(
    port: int, path: str = "/hello", timeout: float = 10.0, host: str = "127.0.0.1"
) -> Response:
    """One GET on a fresh connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return Response(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def classify(exc: BaseException) -> str:
    """Name a client failure: refused, reset, timeout, truncated or other."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "truncated"
    return f"other:{type(exc).__name__}"


def wait_served_by(port: int, pid: int, timeout: float = 10.0, path: str = "/hello") -> Response:
    """Return the first response from *pid*: after a new generation is ready, the old one may
    accept for one more poll interval before it closes its listener copy (and serves what it
    accepted: nothing fails, but a test must not assume the switch is instant)."""
    seen: list[int] = []

    def probe() -> Response | None:
        resp = http_get(port, path)
        seen.append(resp.pid)
        return resp if resp.pid == pid else None

    try:
        return wait_until(probe, timeout, f"a response from pid {pid}")  # type: ignore[return-value]
    except AssertionError:
        raise AssertionError(
            f"no response from pid {pid} in {timeout:g} s; pids seen: {sorted(set(seen))}"
        ) from None


@dataclass
class LoadReport:
    requests: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    slow_started: int = 0
    slow_completed: int = 0
    versions: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for kind, _ in self.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        return (
            f"{self.requests} requests, {len(self.failures)} failed {kinds}, slow"
            f" {self.slow_completed}/{self.slow_started}; first failures: {self.failures[:5]}"
        )


class Load:
    """Client threads hammering a server until stopped (bounded in time and count).

    * ``fresh``: threads opening a new connection per request;
    * ``keepalive``: threads reusing one HTTP/1.1 connection, never retrying a failed request
      (a new connection is opened only when the server said ``Connection: close``);
    * ``slow``: threads sending requests that sleep ``slow_seconds`` server-side.
    """

    def __init__(
        self,
        port: int,
        *,
        fresh: int = 2,
        keepalive: int = 2,
        slow: int = 1,
        slow_seconds: float = 1.0,
        path: str = "/hello",
        max_seconds: float = 120.0,
        max_requests: int = 200_000,
        host: str = "127.0.0.1",
        keepalive_pause: float = 0.0,
    ) -> None:
        self.port, self.host, self.path = port, host, path
        self.slow_seconds = slow_seconds
        self.keepalive_pause = keepalive_pause
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self._threads = (
            [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
            + [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]
            + [threading.Thread(target=self._slow, daemon=True) for _ in range(slow)]
        )

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _running(self) -> bool:
        return (
            not self._stop.is_set()
            and time.monotonic() < self._deadline
            and self.report.requests < self._max_requests
        )

    def _record(self, resp: Response | None, exc: BaseException | None, where: str) -> None:
        with self._lock:
            self.report.requests += 1
            if exc is not None:
                self.report.failures.append((classify(exc), f"{where}: {exc!r}"))
            elif resp is not None:
                if resp.status >= 500 or "ospid:" not in resp.body:
                    self.report.failures.append(("5xx", f"{where}: {resp.status} {resp.body[:80]}"))
                else:
                    self.report.versions.add(resp.version)
                    self.report.pids.add(resp.pid)

    def _fresh(self) -> None:
        while self._running():
            try:
                self._record(http_get(self.port, self.path, 10.0, self.host), None, "fresh")
            except Exception as exc:
                self._record(None, exc, "fresh")

    def _keepalive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while self._running():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in resp.getheaders()}
                self._record(Response(resp.status, body, headers), None, "keepalive")
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # no retry: every failure counts
                self._record(None, exc, "keepalive")
                conn.close()
                conn = None
            if self.keepalive_pause:
                self._stop.wait(self.keepalive_pause)
        if conn is not None:
            conn.close()

    def _slow(self) -> None:
        path = f"{self.path}?sleep={self.slow_seconds}"
        while self._running():
            with self._lock:
                self.report.slow_started += 1
            try:
                resp = http_get(self.port, path, 10.0 + self.slow_seconds * 2, self.host)
                self._record(resp, None, "slow")
                if resp.status == 200:
                    with self._lock:
                        self.report.slow_completed += 1
            except Exception as exc:
                self._record(None, exc, "slow")

    def stop(self) -> LoadReport:
        """Stop the clients (each finishes its request in flight, bounded) and report."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30.0 + self.slow_seconds * 2)
        return self.report


# -- process inspection (Linux /proc; other systems skip these checks) --------------------------
def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def child_pids(pid: int) -> list[int] | None:
    """Direct children of *pid* (Linux), zombies included."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return children


def zombies(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid) or []:
        try:
            with open(f"/proc/{child}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    found.append(child)
        except OSError:
            pass
    return found


PYTHON = sys.executable
LINUX_PROC = os.path.isdir("/proc/self/fd")


def grace_cli(*args: str, timeout: float = 75) -> subprocess.CompletedProcess[str]:
    """Run ``python -m grace_plugins ARGS`` (``reload``, ``status``) from this checkout."""
    return subprocess.run(
        [PYTHON, "-m", "grace_plugins", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


# -- systemd ------------------------------------------------------------------------------------
#: Runs a server the way systemd's socket activation does: the listener moved to fd 3,
#: ``LISTEN_PID`` set to the pid that then execs the server (``argv[2:]``).
SOCKET_ACTIVATION_LAUNCHER = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd);"
    " os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
)


def socket_activated(argv: Sequence[str], listener: socket.socket) -> tuple[list[str], dict]:
    """(argv, env) that start *argv* with *listener* passed as systemd passes it (pass the
    listener's fd to the process, e.g. ``pass_fds``)."""
    fd = listener.fileno()
    launcher = [PYTHON, "-c", SOCKET_ACTIVATION_LAUNCHER, str(fd), *argv]
    return launcher, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}


@dataclass
class Notification:
    """One ``sd_notify`` datagram: who sent it (kernel credentials) and its fields."""

    pid: int
    fields: dict[str, str]


class NotifySocket:
    """A ``NOTIFY_SOCKET`` as systemd opens it: a Unix datagram socket that learns each
    sender's pid from the kernel (``SO_PASSCRED``), so a test can check that only the main pid
    speaks (``NotifyAccess=main``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def next(self, timeout: float, what: str) -> Notification:
        self.sock.settimeout(timeout)  # 0: only a notification already received
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (TimeoutError, BlockingIOError):
            raise AssertionError(f"no notification ({what}) within {timeout:g} s") from None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder, signed=True)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return Notification(pid, fields)

    def close(self) -> None:
        self.sock.close()
