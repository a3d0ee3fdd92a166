"""Keep-alive requests across HUPs, per gunicorn worker configuration (issue: a request that
waits on a kept-alive connection must be answered at drain time, whatever the thread count).

Each row starts ``gunicorn -k WORKER [ARGS] app:app`` on the Flask example app, loads it with
the end-to-end clients (fresh connections, busy keep-alive clients, keep-alive clients idle 1 s
between requests, never retrying) and sends 5 HUPs 2.5 s apart, each with one 2 s request in
flight (sent and accepted by a worker before the HUP). It counts the keep-alive requests that
met a closed connection (a client that does not retry fails each), every failure, the longest
answer of a request that was not the slow one, and HUP to the first answer of the new code.

Usage (from the repository root): python bench/gunicorn_keepalive_hups.py [--rows N,N] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import LoadEngine, Outcome, wait_until  # noqa: E402
from tests.harness.gunicorn import Gunicorn, InFlight, answers  # noqa: E402

EXAMPLE = os.path.join(ROOT, "example_flask", "app.py")
ROWS = (
    ("`-k grace_plugins.Worker` (gunicorn's defaults)", ("-k", "grace_plugins.Worker")),
    ("`-k gthread` (gunicorn's defaults)", ("-k", "gthread")),
    ("`-k grace_plugins.Worker -w 2 --threads 1`", ("-k", "grace_plugins.Worker", "-w", "2")),
    (
        "`-k grace_plugins.Worker -w 2 --threads 2`",
        ("-k", "grace_plugins.Worker", "-w", "2", "--threads", "2"),
    ),
)
HUPS = 5
HUP_INTERVAL = 2.5
SLOW_SECONDS = 2.0


@dataclass
class Counts:
    requests: int = 0
    keepalive_closed: int = 0  # keep-alive (busy or idle) requests that met a closed connection
    failed: int = 0
    longest_ms: float = 0.0  # the longest answer of a request other than the slow ones
    failures: list[str] = field(default_factory=list)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (end, version)


class Clients(LoadEngine):
    """The end-to-end clients, counted for one row."""

    def __init__(self, port: int) -> None:
        super().__init__(port, fresh=2, keepalive=2, idle=2, slow=0, idle_seconds=1.0, timeout=10)
        self.counts = Counts()

    def record(self, outcome: Outcome) -> None:
        counts = self.counts
        counts.requests += 1
        if outcome.failure:
            counts.failed += 1
            counts.failures.append(f"{outcome.kind}: {outcome.failure} {outcome.detail[:60]}")
            if outcome.kind in ("keepalive", "idle"):
                counts.keepalive_closed += 1
            return
        counts.longest_ms = max(counts.longest_ms, (outcome.end - outcome.start) * 1000)
        assert outcome.response is not None
        counts.answers.append((outcome.end, outcome.response.version))


def set_version(app_dir: str, version: str) -> None:
    path = os.path.join(app_dir, "app.py")
    with open(EXAMPLE) as handle:
        text = handle.read().replace('VERSION = "v1"', f"VERSION = {version!r}")
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def run_row(args: tuple[str, ...]) -> tuple[Counts, list[float], int]:
    """One server, loaded across HUPS HUPs; returns the counts, HUP -> new code (s) per HUP,
    and how many slow requests failed. Blocks; every wait bounded."""
    app_dir = tempfile.mkdtemp(prefix="bench-gunicorn-")
    try:
        set_version(app_dir, "v1")
        argv = [
            sys.executable, "-m", "gunicorn", *args, "--chdir", app_dir,
            "--bind", "127.0.0.1:0", "--control-socket", os.path.join(app_dir, "ctl.sock"),
            "app:app",
        ]  # fmt: skip
        env = {"PYTHONDONTWRITEBYTECODE": "1"}
        with Gunicorn(argv, cwd=app_dir, env=env) as server:
            port = int(server.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", 30).group(1))
            wait_until(lambda: answers(port), 30, "the first answer")
            clients = Clients(port)
            slow: list[InFlight] = []
            hups: list[tuple[float, str]] = []
            clients.start()
            try:
                time.sleep(HUP_INTERVAL)  # steady state first (a benchmark's pacing)
                for n in range(2, 2 + HUPS):
                    slow.append(InFlight(port, f"/hello?sleep={SLOW_SECONDS}", timeout=30))
                    slow[-1].wait_held(server)
                    set_version(app_dir, f"v{n}")
                    hups.append((time.monotonic(), f"v{n}"))
                    os.kill(server.pid, signal.SIGHUP)
                    time.sleep(HUP_INTERVAL)
                time.sleep(HUP_INTERVAL)
            finally:
                clients.stop()
                for request in slow:
                    request.thread.join(30)
            os.kill(server.pid, signal.SIGTERM)
            server.proc.wait(60)
        counts = clients.counts
        cutovers = []
        for at, version in hups:
            first = min((end for end, v in counts.answers if v == version and end > at), default=0)
            cutovers.append(first - at if first else float("nan"))
        slow_failed = sum(1 for r in slow if r.response is None or r.response.status != 200)
        return counts, cutovers, slow_failed
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="", help="row numbers to run (1-based), e.g. 1,3")
    parser.add_argument("--runs", type=int, default=1, help="runs per row")
    args = parser.parse_args()
    wanted = {int(n) for n in args.rows.split(",") if n} or set(range(1, len(ROWS) + 1))
    print(
        "| server, same load | requests | keep-alive requests that met a closed connection"
        " | other failures | slow requests failed | longest stall | HUP -> new code (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for number, (label, row_args) in enumerate(ROWS, 1):
        if number not in wanted:
            continue
        for _ in range(args.runs):
            counts, cutovers, slow_failed = run_row(row_args)
            print(
                f"| {label} | {counts.requests:,} | {counts.keepalive_closed}"
                f" | {counts.failed - counts.keepalive_closed} | {slow_failed}"
                f" | {counts.longest_ms:,.0f} ms | {statistics.median(cutovers):.2f} s |",
                flush=True,
            )
            for failure in counts.failures[:3]:
                print(f"    e.g. {failure}", file=sys.stderr)


if __name__ == "__main__":
    main()
