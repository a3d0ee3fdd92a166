"""Save → first answer from the new code, under load: what a developer waits for after a save.

For each server: a fresh copy of the benchmark app, loaded by the end-to-end harness's clients
(``tests/harness``: fresh connections, keep-alive connections that never retry, idle keep-alive
connections that sit idle across upgrades), then the version module saved N times (default 20),
a fixed interval apart (default 2.5 s), as an editor saves (a temporary file renamed over it),
nothing else done. Each save is timed to the first answer carrying its version; a version that
never answered (the next save came first) is *never served*. The HUP rows write the same
module, then ``kill -HUP`` the server (its reloader off): the upgrade's own time, without the
watcher's.

Rows: ``flask --app flask_app hotrun --reload`` and ``flask run --reload`` (werkzeug's reloader
as installed: watchdog if present), ``manage.py runhot`` and ``runserver`` on a minimal Django
project (one view); ``--site`` adds ``runhot`` on a startproject-shaped site with admin. The
library's own files are excluded from the Flask reloaders (``--exclude-patterns``), as in
``bench/upgrades.py``.

Usage: ``python bench/saves.py [--saves N] [--interval S] [--rows hotrun,...] [--site]
[--json FILE]``. Every wait is bounded; every server is stopped by SIGTERM, then SIGKILL of what
it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import servers
from common import (
    FAILURE_PAUSE,
    HERE,
    Server,
    bench_env,
    free_port,
    make_app_dir,
    write_code,
)
from servers import EXCLUDE

from tests.harness import LoadEngine, Outcome, write_module  # on sys.path by common

WARM_READY = r"warm start: template \(pid \d+\) ready after"


@dataclass(frozen=True)
class Row:
    """One server: how to start it, which app it serves, how a new version reaches it."""

    key: str
    label: str
    app: str  # "minimal" (bench/apps) or "site" (bench/apps/djsite)
    argv: Callable[[int, str], list[str]]
    trigger: str = "save"  # or "HUP"
    grace: bool = True
    env: dict[str, str] = field(default_factory=dict)


GRACE = {"BENCH_GRACE": "1"}
ROWS = [
    Row(
        "hotrun",
        "`flask --app flask_app hotrun --reload`",
        "minimal",
        servers.flask("hotrun", "--reload", "--exclude-patterns", EXCLUDE, "--drain-timeout", "10"),
    ),
    Row(
        "hotrun-hup",
        "`flask --app flask_app hotrun --no-reload` (HUP)",
        "minimal",
        servers.flask("hotrun", "--no-reload", "--drain-timeout", "10"),
        "HUP",
    ),
    Row(
        "runhot",
        "`python manage.py runhot` (minimal project)",
        "minimal",
        servers.django("runhot", "--drain-timeout", "10"),
        env=GRACE,
    ),
    Row(
        "runhot-hup",
        "`python manage.py runhot --noreload` (minimal project, HUP)",
        "minimal",
        servers.django("runhot", "--noreload", "--drain-timeout", "10"),
        "HUP",
        env=GRACE,
    ),
    Row(
        "runserver",
        "`python manage.py runserver` (minimal project)",
        "minimal",
        servers.django("runserver"),
        grace=False,
    ),
    Row(
        "flask-run",
        "`flask --app flask_app run --reload`",
        "minimal",
        servers.flask("run", "--reload", "--exclude-patterns", EXCLUDE),
        grace=False,
    ),
]
SITE_ROWS = [
    Row(
        "site-runhot",
        "`python manage.py runhot` (startproject-shaped site with admin)",
        "site",
        servers.django("runhot", "--drain-timeout", "10"),
    ),
    Row(
        "site-runhot-hup",
        "`python manage.py runhot --noreload` (site with admin, HUP)",
        "site",
        servers.django("runhot", "--noreload", "--drain-timeout", "10"),
        "HUP",
    ),
]


class SaveLoad(LoadEngine):
    """The harness's clients; keeps, per code version, when it first answered (monotonic)."""

    def __init__(self, port: int, max_seconds: float) -> None:
        super().__init__(
            port,
            fresh=2,
            keepalive=2,
            idle=2,
            slow=0,
            idle_seconds=1.0,
            timeout=5.0,
            failure_pause=FAILURE_PAUSE,
            max_seconds=max_seconds,
            max_requests=400_000,
        )
        self.requests = 0
        self.first_answer: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.examples: list[str] = []

    def record(self, outcome: Outcome) -> None:
        self.requests += 1
        if outcome.failure or outcome.response is None:
            self.failures[outcome.failure] = self.failures.get(outcome.failure, 0) + 1
            if len(self.examples) < 5:
                self.examples.append(f"{outcome.kind}: {outcome.failure} {outcome.detail}")
            return
        self.first_answer.setdefault(outcome.response.version, outcome.end)


@dataclass
class Result:
    key: str
    label: str
    trigger: str
    saves: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    never_served: list[str] = field(default_factory=list)
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    skipped: str = ""
    log_tail: str = ""
    #: The machine's 1-minute load average as the row began and as it ended (2 cores shared).
    load_average: tuple[float, float] = (0.0, 0.0)


class App:
    """The app in a temporary directory, and its version module."""

    def __init__(self, kind: str) -> None:
        if kind == "minimal":
            self.dir = make_app_dir(0.0)
            self.module = os.path.join(self.dir, "benchcode.py")
        else:
            self.dir = tempfile.mkdtemp(prefix="grace-saves-site-")
            shutil.copytree(os.path.join(HERE, "apps", "djsite"), self.dir, dirs_exist_ok=True)
            self.module = os.path.join(self.dir, "shop", "version.py")
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "-v0"],
                cwd=self.dir,
                env=bench_env(),
                check=True,
                timeout=120,
            )
        self.kind = kind
        self.save("v1")

    def save(self, version: str) -> None:
        """Write *version* as an editor saves (a temporary file renamed over the module)."""
        if self.kind == "minimal":
            write_code(self.dir, version, 0.0)
        else:
            write_module(self.module, f"VERSION = {version!r}\n")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_in_log(server: Server, pattern: str, timeout: float) -> bool:
    """Whether *pattern* appears in the server's log within *timeout* s (read every 50 ms)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        if regex.search(server.output(10**7)):
            return True
        if server.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def run_row(row: Row, saves: int, interval: float, verbose: bool = True) -> Result:
    """Start, load, save N times, stop; never raises for a server's failure."""
    result = Result(row.key, row.label, row.trigger, saves)
    began = os.getloadavg()[0]
    app = App(row.app)
    port = free_port()
    env = bench_env(row.env)
    server = Server(row.argv(port, app.dir), app.dir, env, os.path.join(app.dir, "server.log"))
    load: SaveLoad | None = None
    try:
        server.wait_answering(port, timeout=60.0)
        if row.grace:
            wait_in_log(server, WARM_READY, 60.0)  # upgrades are warm from the first save
        load = SaveLoad(port, max_seconds=saves * interval + 60.0)
        load.start()
        time.sleep(2.0)  # steady load; the reloaders have taken their first look at the files
        saved = run_saves(app, server, row, load, saves, interval)
    except RuntimeError as exc:
        result.skipped = f"server failed: {str(exc).splitlines()[0]}"
        saved = {}
    finally:
        if load is not None:
            load.stop()
        server.stop()
        result.log_tail = server.output(4000, quiet=True)
        result.load_average = (began, os.getloadavg()[0])
        app.remove()
    if load is not None and saved:
        for version, moment in saved.items():
            answered = load.first_answer.get(version)
            if answered is None:
                result.never_served.append(version)
            else:
                result.latencies_ms.append(round((answered - moment) * 1000, 1))
        result.requests = load.requests
        result.failures = dict(load.failures)
        result.examples = load.examples
    if verbose:
        print(f"  {describe(result)}", flush=True)
    return result


def run_saves(
    app: App, server: Server, row: Row, load: SaveLoad, saves: int, interval: float
) -> dict[str, float]:
    """Save N versions *interval* s apart (HUP after each for the HUP rows); return {version:
    when it was saved}. After the last, wait up to *interval* s for its answer."""
    saved: dict[str, float] = {}
    start = time.monotonic()
    for number in range(saves):
        version = f"v{number + 2}"
        app.save(version)
        saved[version] = time.monotonic()
        if row.trigger == "HUP":
            server.signal(signal.SIGHUP)
        next_save = start + (number + 1) * interval
        time.sleep(max(0.0, next_save - time.monotonic()))
    last = f"v{saves + 1}"
    deadline = time.monotonic() + interval
    while last not in load.first_answer and time.monotonic() < deadline:
        time.sleep(0.02)
    return saved


def describe(result: Result) -> str:
    if result.skipped:
        return f"{result.label}: skipped: {result.skipped}"
    return (
        f"{result.label}: {spread(result.latencies_ms)}, never served"
        f" {len(result.never_served)} of {result.saves}, failed"
        f" {sum(result.failures.values())} of {result.requests} {result.failures or ''}"
        f" (load average {result.load_average[0]:.1f} → {result.load_average[1]:.1f})"
    )


def spread(values: list[float]) -> str:
    """min / median / max in ms, or "never" if no save was served."""
    if not values:
        return "never"
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f} ms"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| server | save → new code, min / median / max | saves never served | failed requests |",
        "|---|---|---|---|",
    ]
    for res in results:
        if res.skipped:
            lines.append(f"| {res.label} | skipped: {res.skipped} | | |")
            continue
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(res.failures.items()))
        failed = sum(res.failures.values())
        lines.append(
            f"| {res.label} | {spread(res.latencies_ms)}"
            f" | {len(res.never_served)} of {res.saves}"
            f" | {failed:,} of {res.requests:,}{f' ({kinds})' if kinds else ''} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20, help="saves per server (20)")
    parser.add_argument("--interval", type=float, default=2.5, help="seconds between saves")
    keys = [r.key for r in ROWS + SITE_ROWS]
    parser.add_argument("--rows", default="", help=f"comma-separated, of: {', '.join(keys)}")
    parser.add_argument("--site", action="store_true", help="add the site-with-admin rows")
    parser.add_argument("--json", help="write every number (and each server's log tail) here")
    args = parser.parse_args(argv)
    if args.saves < 1 or args.interval <= 0:
        parser.error("--saves must be at least 1 and --interval above 0")
    rows = ROWS + (SITE_ROWS if args.site else [])
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - set(keys))
        if unknown:
            parser.error(f"unknown rows {unknown}: use some of {', '.join(keys)}")
        rows = [r for r in ROWS + SITE_ROWS if r.key in wanted]
    print(f"{args.saves} saves, {args.interval:g} s apart, per server:", flush=True)
    results = [run_row(row, args.saves, args.interval) for row in rows]
    print("\n".join(["", *table(results)]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
