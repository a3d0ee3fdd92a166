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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # the harness is shared with the tests (tests/harness)
    sys.path.insert(0, ROOT)

from tests.harness import (  # noqa: E402
    BODY,
    FAILURE_KINDS,  # noqa: F401 (the bench scripts take it from here)
    INHERITED_VARS,
    LoadEngine,
    Outcome,
    ServerProcess,
    classify,  # noqa: F401 (the bench scripts take it from here)
    http_get,
    server_env,
    write_bench_code,
)

APPS = os.path.join(HERE, "apps")
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


# -- the load: the harness's clients, each request kept as a timeline sample -----------------------
class Load(LoadEngine):
    """Client threads on 127.0.0.1 (see ``tests/harness/load.py``), bounded in time and count,
    recording every request in *timeline* (times from *t0*). A failed client pauses
    ``FAILURE_PAUSE`` before its next request, as a real client would."""

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
        super().__init__(
            port,
            fresh=fresh,
            keepalive=keepalive,
            slow=slow,
            slow_seconds=slow_seconds,
            timeout=timeout,
            failure_pause=FAILURE_PAUSE,
            max_seconds=max_seconds,
            max_requests=max_requests,
        )
        self.t0 = t0
        self.timeline = timeline

    def start(self) -> None:
        self.timeline.load_start = time.monotonic() - self.t0
        super().start()

    def stop(self) -> None:
        """Stop the clients; each finishes (or times out) its request in flight."""
        super().stop()
        self.timeline.load_end = time.monotonic() - self.t0

    def record(self, outcome: Outcome) -> None:
        start, end = outcome.start - self.t0, outcome.end - self.t0
        resp = outcome.response
        if outcome.failure or resp is None:
            sample = Sample(
                outcome.kind, start, end, failure=outcome.failure, detail=outcome.detail
            )
        else:
            sample = Sample(outcome.kind, start, end, resp.pid, resp.version)
            if outcome.kind == "slow":
                self.timeline.slow_completed += 1
        self.timeline.samples.append(sample)

    def slow_started(self) -> None:
        self.timeline.slow_started += 1


# -- the server -----------------------------------------------------------------------------------
def free_port() -> int:
    """A port the OS considers free right now (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_code(app_dir: str, version: str, import_seconds: float) -> None:
    """Write ``benchcode.py``, the code under upgrade, with a new mtime (reloaders poll it)."""
    write_bench_code(app_dir, version, import_seconds)


def make_app_dir(import_seconds: float) -> str:
    """A fresh copy of ``bench/apps`` with ``benchcode.py`` at version v1."""
    app_dir = tempfile.mkdtemp(prefix="grace-bench-")
    shutil.copytree(
        APPS, app_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.md")
    )
    write_code(app_dir, "v1", import_seconds)
    return app_dir


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = server_env(extra)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for name in INHERITED_VARS:
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


class Server(ServerProcess):
    """A server process started in its own session, its output in a log file; stopping it
    kills only what it started (the harness records its descendants by pid and start time)."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], log_path: str) -> None:
        super().__init__(argv, cwd=cwd, full_env=env, log_path=log_path)
        self.seen_pids: set[int] = set()

    def output(self, tail: int = 4000, quiet: bool = False) -> str:
        """The end of the server's output; *quiet* drops per-request access log lines."""
        text = super().output()
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
                found = BODY.search(http_get(port, timeout=2).body)
                self.owned.scan()
                if found:
                    self.seen_pids.add(int(found.group(1)))
                    return int(found.group(1)), found.group(2)
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {timeout:g} s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        self.owned.scan()
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:  # type: ignore[override]
        """SIGTERM, then SIGKILL of every process this server started (recorded, not guessed)."""
        self.close(grace=timeout)


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
