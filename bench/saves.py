"""Save → first answer from the new code, under load: what a developer waits for after a save.

For each server: a fresh copy of the benchmark app, loaded by the end-to-end harness's clients
(``tests/harness``: fresh connections, keep-alive connections that never retry, idle keep-alive
connections that sit idle across upgrades), then the version module saved N times (default 20),
as an editor saves (a temporary file renamed over it), each timed to the first answer carrying
its version; a version that never answered (the next save came first) is *never served*.

Our servers run with their file watcher (the reloader on) and get, on the same process, one
interval after each save, a ``kill -HUP`` with nothing changed: HUP → the first answer of the
new generation is the upgrade's own time, so save ÷ HUP is what the watcher adds. Their log says
where a save's time went (``... served N ms after the save (A ms to hear it, B ms to start and
be ready)``), how many upgrades the watcher started for the saves (one each), and whether each
upgrade was forked warm. The servers they replace get the saves alone. Events are an interval
apart (default 2.5 s), each moved at random by up to ``--jitter`` (default 0.5 s; see
:class:`Plan`).

Rows: ``flask --app flask_app hotrun --reload``, ``manage.py runhot`` on a minimal project (one
view) and on a startproject-shaped site with admin, ``runserver`` on the minimal project,
``flask run --reload`` with werkzeug's stat reloader and with watchdog (as installed). The
library's own files are excluded from the Flask reloaders (``--exclude-patterns``).

Usage: ``python bench/saves.py [--saves N] [--interval S] [--jitter S] [--rows hotrun,...]
[--json FILE] [--keep-logs DIR]``.
Every wait is bounded; every server is stopped by SIGTERM, then SIGKILL of what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import saves_tables
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
from procmem import Proc, read_proc
from saves_tables import Result, account
from servers import EXCLUDE
from upgrades import block_watchdog

from tests.harness import LoadEngine, Outcome, procfs, write_module  # on sys.path by common

WATCHING = r"watching \d+ files.*: what generation 1 loaded"


@dataclass(frozen=True)
class Row:
    """One server: how to start it, which app it serves."""

    key: str
    label: str
    app: str  # "minimal" (bench/apps) or "site" (bench/apps/djsite)
    argv: Callable[[int, str], list[str]]
    grace: bool = True  # ours: a HUP after each save, and its log read
    stat_reloader: bool = False  # werkzeug polls (watchdog made unimportable)
    env: dict[str, str] = field(default_factory=dict)


GRACE = {"BENCH_GRACE": "1"}
DRAIN = ("--drain-timeout", "10")
ROWS = [
    Row(
        "hotrun",
        "`flask --app flask_app hotrun --reload`",
        "minimal",
        servers.flask("hotrun", "--reload", "--exclude-patterns", EXCLUDE, *DRAIN),
    ),
    Row(
        "runhot",
        "`python manage.py runhot` (minimal project)",
        "minimal",
        servers.django("runhot", *DRAIN),
        env=GRACE,
    ),
    Row(
        "site-runhot",
        "`python manage.py runhot` (site with admin)",
        "site",
        servers.django("runhot", *DRAIN),
    ),
    Row(
        "runserver",
        "`python manage.py runserver` (minimal project)",
        "minimal",
        servers.django("runserver"),
        grace=False,
    ),
    Row(
        "flask-run-stat",
        "`flask --app flask_app run --reload` (stat reloader)",
        "minimal",
        servers.flask("run", "--reload", "--exclude-patterns", EXCLUDE),
        grace=False,
        stat_reloader=True,
    ),
    Row(
        "flask-run",
        "`flask --app flask_app run --reload` (watchdog, as installed)",
        "minimal",
        servers.flask("run", "--reload", "--exclude-patterns", EXCLUDE),
        grace=False,
    ),
]
EXTRA_ROWS = [
    Row(
        "site-runserver",
        "`python manage.py runserver` (site with admin)",
        "site",
        servers.django("runserver"),
        grace=False,
    ),
]


class SaveLoad(LoadEngine):
    """The harness's clients; keeps when each code version and each pid first answered."""

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
        self.first_of_process: dict[tuple[int, str], float] = {}  # (pid, version): when
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
        answer = (outcome.response.pid, outcome.response.version)
        self.first_of_process.setdefault(answer, outcome.end)


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
        # v1 is there (copied or written); backdate it, so that no save's mtime is ahead of the
        # clock (write_module keeps mtimes increasing) and the watcher sees no save at start.
        past = time.time() - 60.0
        os.utime(self.module, (past, past))

    def save(self, version: str) -> None:
        """Write *version* as an editor saves (a temporary file renamed over the module)."""
        if self.kind == "minimal":
            write_code(self.dir, version, 0.0)
        else:
            write_module(self.module, f"VERSION = {version!r}\n")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Plan:
    """How many saves, and how far apart: *interval* s on average, each event moved by up to
    *jitter* s at random (fixed seed), so that no kind of event keeps one phase of the clients'
    1 s idle cadence (saves and HUPs 2.5 s apart exactly sat half a cycle apart: the old
    generation's drain took 800 ms after every save and 250 ms after every HUP)."""

    saves: int = 20
    interval: float = 2.5
    jitter: float = 0.5
    seed: int = 22

    def schedule(self, events: int) -> list[float]:
        """When each event is due, in seconds from the first, which is at 0."""
        rng = random.Random(self.seed)
        moved = [k * self.interval + rng.uniform(-self.jitter, self.jitter) for k in range(events)]
        return [max(0.0, t - moved[0]) for t in moved]


@dataclass
class Events:
    """When each version was saved, and (ours) when the HUP that followed it was sent."""

    saved: dict[str, float] = field(default_factory=dict)
    hups: dict[str, float] = field(default_factory=dict)
    #: The log's size (bytes) as each save began, and as each HUP was sent.
    saved_at: dict[str, int] = field(default_factory=dict)
    hup_at: dict[str, int] = field(default_factory=dict)


def run_row(row: Row, plan: Plan, verbose: bool = True, keep_logs: str = "") -> Result:
    """Start, load, save N times (ours: each save followed by a HUP), stop; never raises for a
    server's failure."""
    result = Result(row.key, row.label, row.grace, plan.saves)
    began = os.getloadavg()[0]
    app = App(row.app)
    port = free_port()
    env = bench_env(row.env)
    if row.stat_reloader:
        env["PYTHONPATH"] = os.pathsep.join([block_watchdog(app.dir), env["PYTHONPATH"]])
    server = Server(row.argv(port, app.dir), app.dir, env, os.path.join(app.dir, "server.log"))
    load: SaveLoad | None = None
    events = Events()
    try:
        server.wait_answering(port, timeout=60.0)
        if row.grace:  # upgrades are warm from the first save, and the watcher is watching
            servers.wait_in_log(server, servers.TEMPLATE_READY, 60.0)
            servers.wait_in_log(server, WATCHING, 60.0)
        events_due = plan.saves * (2 if row.grace else 1)
        load = SaveLoad(port, max_seconds=events_due * plan.interval + 60.0)
        load.start()
        time.sleep(2.0)  # steady load; the polling reloaders have taken their first look
        result.supervisor_start = _supervisor(server)
        processes = len(procfs.descendants(server.owned.root)) if server.owned.root else 0
        events = run_events(app, server, row, load, plan)
        _settled(server, processes, timeout=20.0)
        result.supervisor_end = _supervisor(server)
    except RuntimeError as exc:
        result.skipped = f"server failed: {str(exc).splitlines()[0]}"
    finally:
        if load is not None:
            load.stop()
        server.stop()
        result.log_tail = server.output(4000, quiet=True)
        with open(os.path.join(app.dir, "server.log"), "rb") as handle:
            log = handle.read()
        result.load_average = (began, os.getloadavg()[0])
        if keep_logs:
            os.makedirs(keep_logs, exist_ok=True)
            shutil.copy(
                os.path.join(app.dir, "server.log"), os.path.join(keep_logs, f"{row.key}.log")
            )
        app.remove()
    if load is not None and events.saved:
        account(result, load, events, log if row.grace else b"")
    if verbose:
        print(f"  {saves_tables.describe(result)}", flush=True)
    return result


def _settled(server: Server, processes: int, timeout: float) -> None:
    """Wait (at most *timeout* s) until the old generations have drained: the tree has no more
    processes than it had before the saves."""
    root = server.owned.root
    deadline = time.monotonic() + timeout
    while root and len(procfs.descendants(root)) > processes and time.monotonic() < deadline:
        time.sleep(0.1)


def _supervisor(server: Server) -> Proc | None:
    """The process the user started (the supervisor, or the reloader's parent) as it is now."""
    return read_proc(server.pid, "supervisor")


def run_events(app: App, server: Server, row: Row, load: SaveLoad, plan: Plan) -> Events:
    """Save N versions, each followed by a HUP for ours, as *plan* schedules them. After the
    last, wait up to one interval for its answer."""
    events = Events()
    due = plan.schedule(plan.saves * (2 if row.grace else 1))
    log = server.log_path or ""
    start = time.monotonic()
    for step, moment in enumerate(due):
        time.sleep(max(0.0, start + moment - time.monotonic()))
        version = f"v{step // (2 if row.grace else 1) + 2}"
        if version not in events.saved:
            events.saved_at[version] = os.path.getsize(log)
            events.saved[version] = time.monotonic()  # the save's start: its first event is later
            app.save(version)
        else:
            events.hup_at[version] = os.path.getsize(log)
            events.hups[version] = time.monotonic()
            server.signal(signal.SIGHUP)
    time.sleep(plan.interval)  # the last event's upgrade
    last = f"v{plan.saves + 1}"
    deadline = time.monotonic() + plan.interval
    while last not in load.first_answer and time.monotonic() < deadline:
        time.sleep(0.02)
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20, help="saves per server (20)")
    parser.add_argument("--interval", type=float, default=2.5, help="seconds between events")
    parser.add_argument("--jitter", type=float, default=0.5, help="each event moved by ± S")
    keys = [r.key for r in ROWS + EXTRA_ROWS]
    parser.add_argument("--rows", default="", help=f"comma-separated, of: {', '.join(keys)}")
    parser.add_argument("--json", help="write every number (and each server's log tail) here")
    parser.add_argument("--keep-logs", default="", help="copy each server's whole log here")
    args = parser.parse_args(argv)
    if args.saves < 1 or args.interval <= 0 or not 0 <= args.jitter < args.interval / 2:
        parser.error("--saves must be 1 or more, --interval above 0, --jitter under interval/2")
    plan = Plan(args.saves, args.interval, args.jitter)
    rows = ROWS
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - set(keys))
        if unknown:
            parser.error(f"unknown rows {unknown}: use some of {', '.join(keys)}")
        rows = [r for r in ROWS + EXTRA_ROWS if r.key in wanted]
    print(f"{plan.saves} saves, {plan.interval:g} ± {plan.jitter:g} s apart:", flush=True)
    results = [run_row(r, plan, keep_logs=args.keep_logs) for r in rows]
    print("\n".join(["", *saves_tables.tables(results)]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
