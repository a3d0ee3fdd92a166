"""Shared benchmark machinery: start a server, load it, upgrade it, keep a timeline.

Everything here is bounded: every client request has a timeout, every load stops at a deadline
and a request count, every wait for a server has a deadline, and every server is stopped by
SIGTERM then SIGKILL of its process group (and of every pid that answered a request).

A run produces a :class:`Timeline`: one :class:`Sample` per request (when it started and ended,
which pid and code version answered, or how it failed) and one :class:`Upgrade` per upgrade
(when it was triggered, when the new code first answered). :func:`summarize` turns it into the
numbers of one row of the table: ratios, not absolute times, because these machines are noisy.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APPS = os.path.join(HERE, "apps")
BODY = re.compile(r"ospid:(\d+) version:(\S+)")
FAILURE_KINDS = ("refused", "reset", "timeout", "5xx", "truncated", "other")
#: A client that failed waits this long before its next request.
FAILURE_PAUSE = 0.05


# -- the timeline ---------------------------------------------------------------------------------
@dataclass
class Sample:
    """One request as the client saw it (times in seconds since the run's start)."""

    kind: str  # fresh, keepalive, slow
    start: float
    end: float
    pid: int = -1
    version: str = ""
    failure: str = ""  # "" or one of FAILURE_KINDS
    detail: str = ""


@dataclass
class Upgrade:
    """One upgrade: its trigger time and when the new version first answered (or None)."""

    version: str
    triggered: float
    first_new: float | None = None


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    upgrades: list[Upgrade] = field(default_factory=list)
    load_start: float = 0.0
    load_end: float = 0.0
    slow_started: int = 0
    slow_completed: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Timeline:
        return cls(
            samples=[Sample(**s) for s in data["samples"]],
            upgrades=[Upgrade(**u) for u in data["upgrades"]],
            load_start=data["load_start"],
            load_end=data["load_end"],
            slow_started=data["slow_started"],
            slow_completed=data["slow_completed"],
        )


def classify(exc: BaseException) -> str:
    """Name a client-side failure: refused, reset, timeout, truncated or other."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "truncated"
    return "other"


# -- the load -------------------------------------------------------------------------------------
class Load:
    """Client threads on 127.0.0.1, bounded in time and count, recording every request.

    * ``fresh`` threads open a new connection per request;
    * ``keepalive`` threads reuse one HTTP/1.1 connection and never retry: a failed request
      counts, then a new connection is opened (also when the server said ``Connection: close``);
    * ``slow`` threads send ``?sleep=slow_seconds`` requests, which are in flight across upgrades.
    """

    def __init__(
        self,
        port: int,
        t0: float,
        timeline: Timeline,
        *,
        fresh: int = 2,
        keepalive: int = 2,
        slow: int = 1,
        slow_seconds: float = 1.0,
        timeout: float = 5.0,
        max_seconds: float = 120.0,
        max_requests: int = 100_000,
    ) -> None:
        self.port = port
        self.t0 = t0
        self.timeline = timeline
        self.slow_seconds = slow_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self._threads = (
            [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
            + [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]
            + [threading.Thread(target=self._slow, daemon=True) for _ in range(slow)]
        )

    def start(self) -> None:
        self.timeline.load_start = time.monotonic() - self.t0
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the clients; each finishes (or times out) its request in flight."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + self.slow_seconds + 5.0)
        self.timeline.load_end = time.monotonic() - self.t0

    def _running(self) -> bool:
        return (
            not self._stop.is_set()
            and time.monotonic() < self._deadline
            and len(self.timeline.samples) < self._max_requests
        )

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _add(self, sample: Sample) -> None:
        with self._lock:
            self.timeline.samples.append(sample)

    def _answer(self, kind: str, start: float, status: int, body: str) -> Sample:
        end = self._now()
        found = BODY.search(body)
        if status >= 500 or not found:
            return Sample(kind, start, end, failure="5xx", detail=f"{status} {body[:60]!r}")
        return Sample(kind, start, end, int(found.group(1)), found.group(2))

    def _get(self, kind: str, path: str, timeout: float) -> Sample:
        start = self._now()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            return self._answer(kind, start, resp.status, body)
        except Exception as exc:
            return Sample(kind, start, self._now(), failure=classify(exc), detail=repr(exc)[:120])
        finally:
            conn.close()

    def _pause_after(self, sample: Sample) -> None:
        """After a failure, wait a little as a real client would: a refused port is not
        hammered thousands of times, so counts stay comparable between servers."""
        if sample.failure:
            self._stop.wait(FAILURE_PAUSE)

    def _fresh(self) -> None:
        while self._running():
            sample = self._get("fresh", "/hello", self.timeout)
            self._add(sample)
            self._pause_after(sample)

    def _keepalive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while self._running():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            start = self._now()
            try:
                conn.request("GET", "/hello")
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                self._add(self._answer("keepalive", start, resp.status, body))
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # no retry: the failure counts
                failed = Sample(
                    "keepalive", start, self._now(), failure=classify(exc), detail=repr(exc)[:120]
                )
                self._add(failed)
                conn.close()
                conn = None
                self._pause_after(failed)
        if conn is not None:
            conn.close()

    def _slow(self) -> None:
        path = f"/hello?sleep={self.slow_seconds}"
        while self._running():
            with self._lock:
                self.timeline.slow_started += 1
            sample = self._get("slow", path, self.timeout + self.slow_seconds)
            self._add(sample)
            self._pause_after(sample)
            if not sample.failure:
                with self._lock:
                    self.timeline.slow_completed += 1


# -- the server -----------------------------------------------------------------------------------
def free_port() -> int:
    """A port the OS considers free right now (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_code(app_dir: str, version: str, import_seconds: float) -> None:
    """Write ``benchcode.py``, the code under upgrade, with a new mtime (reloaders poll it)."""
    path = os.path.join(app_dir, "benchcode.py")
    text = (
        '"""The code under upgrade (written by bench/run.py)."""\n\n'
        "import time\n\n"
        f"VERSION = {version!r}\n"
        f"IMPORT_SECONDS = {import_seconds!r}\n"
        "time.sleep(IMPORT_SECONDS)\n"
    )
    old_mtime = os.stat(path).st_mtime if os.path.exists(path) else 0.0
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)  # a reader never sees half a file
    mtime = max(time.time(), old_mtime + 1.0)
    os.utime(path, (mtime, mtime))


def make_app_dir(import_seconds: float) -> str:
    """A fresh copy of ``bench/apps`` with ``benchcode.py`` at version v1."""
    app_dir = tempfile.mkdtemp(prefix="grace-bench-")
    shutil.copytree(
        APPS, app_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.md")
    )
    write_code(app_dir, "v1", import_seconds)
    return app_dir


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    for name in (
        "GRACE_PLUGINS_HANDOFF",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WERKZEUG_SERVER_FD",
        "WERKZEUG_RUN_MAIN",
        "RUN_MAIN",
    ):
        env.pop(name, None)
    env.update(extra or {})
    return env


def bin_path(name: str) -> str:
    """A console script of this interpreter's environment (``flask``, ``gunicorn``)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else (shutil.which(name) or name)


def import_seconds(app_dir: str, code: str, env: dict[str, str], repeat: int = 1) -> float:
    """Bare import time of the app: best of *repeat* fresh interpreters timing *code*."""
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    best = float("inf")
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=app_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


class Server:
    """A server process started in its own session, its output in a log file."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], log_path: str) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.seen_pids: set[int] = set()

    def output(self, tail: int = 4000, quiet: bool = False) -> str:
        """The end of the server's output; *quiet* drops per-request access log lines."""
        with open(self.log_path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
        if quiet:
            text = "\n".join(ln for ln in text.splitlines() if '"GET /' not in ln)
        return text[-tail:]

    def wait_answering(self, port: int, timeout: float = 60.0) -> tuple[int, str]:
        """Wait until ``/hello`` answers; return (pid, version). Raises RuntimeError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    conn.request("GET", "/hello")
                    found = BODY.search(conn.getresponse().read().decode("utf-8", "replace"))
                finally:
                    conn.close()
                if found:
                    self.seen_pids.add(int(found.group(1)))
                    return int(found.group(1)), found.group(2)
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {timeout:g} s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL the process group and every pid that answered."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for pid in [self.pid, *self.seen_pids]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid != self.pid and _is_ours(pid):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def _is_ours(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


# -- one run --------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """How to load and upgrade one server."""

    upgrades: int = 3
    steady_seconds: float = 2.0
    settle_seconds: float = 2.0  # after the new code answers, before the next upgrade
    cutover_timeout: float = 30.0
    slow_seconds: float = 1.0
    fresh: int = 2
    keepalive: int = 2
    slow: int = 1


def run_upgrades(
    server: Server,
    port: int,
    app_dir: str,
    import_delay: float,
    trigger: Callable[[], None],
    plan: RunPlan,
) -> Timeline:
    """Load *server*, then perform ``plan.upgrades`` upgrades: write new code and call
    *trigger* (send a signal, or nothing when the reloader sees the file). Blocks; bounded."""
    timeline = Timeline()
    t0 = time.monotonic()
    budget = plan.steady_seconds + plan.upgrades * (plan.cutover_timeout + plan.settle_seconds)
    load = Load(
        port,
        t0,
        timeline,
        fresh=plan.fresh,
        keepalive=plan.keepalive,
        slow=plan.slow,
        slow_seconds=plan.slow_seconds,
        max_seconds=budget + 30.0,
    )
    load.start()
    try:
        time.sleep(plan.steady_seconds)
        for number in range(plan.upgrades):
            version = f"v{number + 2}"
            write_code(app_dir, version, import_delay)
            upgrade = Upgrade(version, time.monotonic() - t0)
            timeline.upgrades.append(upgrade)
            trigger()
            deadline = time.monotonic() + plan.cutover_timeout
            while time.monotonic() < deadline and upgrade.first_new is None:
                with load._lock:
                    ends = [s.end for s in timeline.samples[-200:] if s.version == version]
                if ends:
                    upgrade.first_new = min(ends)
                    break
                time.sleep(0.02)
            if upgrade.first_new is None:
                break  # the server did not take the new code: the row says so
            time.sleep(plan.settle_seconds)
    finally:
        load.stop()
    server.seen_pids.update(s.pid for s in timeline.samples if s.pid > 0)
    return timeline


# -- the numbers of one row -----------------------------------------------------------------------
def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


@dataclass
class RowNumbers:
    requests: int
    failures: dict[str, int]
    slow_started: int
    slow_completed: int
    upgrades_done: int
    upgrades_tried: int
    cutover_s: list[float]
    rps: float
    steady_p99: float | None
    window_p99: float | None
    #: Longest time in an upgrade window during which no request completed successfully.
    stall_s: float


def summarize(timeline: Timeline, window_after: float = 1.0) -> RowNumbers:
    """Count requests and failures; p99 latency of the quick requests (fresh and keep-alive)
    before the first upgrade (steady) and in the upgrade windows (from each trigger until
    *window_after* seconds after the new code first answered)."""
    failures = {kind: 0 for kind in FAILURE_KINDS}
    for sample in timeline.samples:
        if sample.failure:
            failures[sample.failure] = failures.get(sample.failure, 0) + 1
    quick = [s for s in timeline.samples if s.kind != "slow" and not s.failure]
    first = timeline.upgrades[0].triggered if timeline.upgrades else timeline.load_end
    steady = [s.end - s.start for s in quick if timeline.load_start + 0.3 <= s.start < first]
    windows = []
    for up in timeline.upgrades:
        end = (up.first_new if up.first_new is not None else timeline.load_end) + window_after
        windows.append((up.triggered, end))
    in_window = [s.end - s.start for s in quick if any(a <= s.start < b for a, b in windows)]
    done = [u for u in timeline.upgrades if u.first_new is not None]
    completions = sorted(s.end for s in timeline.samples if not s.failure)
    stall = 0.0
    for start, end in windows:
        moments = [start, *(t for t in completions if start < t < end), end]
        stall = max(stall, *(b - a for a, b in zip(moments, moments[1:], strict=False)))
    ok = sum(1 for s in timeline.samples if not s.failure)
    duration = max(timeline.load_end - timeline.load_start, 1e-6)
    return RowNumbers(
        requests=len(timeline.samples),
        failures=failures,
        slow_started=timeline.slow_started,
        slow_completed=timeline.slow_completed,
        upgrades_done=len(done),
        upgrades_tried=len(timeline.upgrades),
        cutover_s=[u.first_new - u.triggered for u in done],  # type: ignore[operator]
        rps=ok / duration,
        steady_p99=p99(steady),
        window_p99=p99(in_window),
        stall_s=stall,
    )
