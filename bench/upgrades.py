"""The upgrade rows, measured by our own client: it attributes every answer to a pid and a code
version, so it sees failures by kind, slow requests across upgrades, the cutover and stalls.

Each row starts one server, loads it from client threads (``common.Load``: fresh connections,
keep-alive connections that never retry, slow in-flight requests; bounded in time and count),
performs N upgrades (a saved file for the reloaders, ``kill -HUP`` for the rest) and counts
what the clients saw. A row whose adapter is not importable is skipped with a note.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import servers
from common import (
    RowNumbers,
    RunPlan,
    Server,
    Timeline,
    bench_env,
    free_port,
    import_seconds,
    make_app_dir,
    run_upgrades,
    summarize,
)
from servers import DJANGO_IMPORT, EXCLUDE


@dataclass
class Row:
    """One server configuration: how to start, check and upgrade it."""

    group: str
    label: str
    grace: bool
    trigger: str  # "file save" or "HUP"
    argv: Callable[[int, str], list[str]]
    import_code: str
    check: list[str] | None = None  # a command that must exit 0 in the app dir, else skip
    env: dict[str, str] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return servers.short(self.label)


ROWS = [
    Row(
        "flask",
        "`flask hotrun --reload`",
        True,
        "file save",
        servers.flask(
            "hotrun", "--reload", "--exclude-patterns", EXCLUDE, "--drain-timeout", "10", watch=True
        ),
        "import flask_app",
        servers.FLASK_CHECK,
    ),
    Row(
        "flask",
        "`flask hotrun`",
        True,
        "HUP",
        servers.flask("hotrun", "--no-reload", "--drain-timeout", "10"),
        "import flask_app",
        servers.FLASK_CHECK,
    ),
    Row(
        "flask",
        "`flask run --reload`",
        False,
        "file save",
        servers.flask("run", "--reload", "--exclude-patterns", EXCLUDE, watch=True),
        "import flask_app",
    ),
    Row(
        "django",
        "`manage.py runhot`",
        True,
        "file save",
        servers.django("runhot", "--drain-timeout", "10"),
        DJANGO_IMPORT,
        servers.DJANGO_CHECK,
        {"BENCH_GRACE": "1"},
    ),
    Row(
        "django",
        "`manage.py runserver`",
        False,
        "file save",
        servers.django("runserver"),
        DJANGO_IMPORT,
    ),
    Row(
        "gunicorn",
        "`gunicorn -k grace_plugins.Worker -w 2 --threads 4`",
        True,
        "HUP",
        servers.gunicorn("-k", "grace_plugins.Worker", "--threads", "4"),
        "import flask_app",
        servers.GUNICORN_CHECK,
    ),
    Row(
        "gunicorn",
        "`gunicorn -k gthread -w 2 --threads 4`",
        False,
        "HUP",
        servers.gunicorn("-k", "gthread", "--threads", "4"),
        "import flask_app",
    ),
    Row(
        "gunicorn",
        "`gunicorn -k sync -w 2`",
        False,
        "HUP",
        servers.gunicorn("-k", "sync"),
        "import flask_app",
    ),
]
IMPORT_DELAYS = (0.0, 1.0)
_IMPORT_CACHE: dict[tuple[str, float], float] = {}


def block_watchdog(app_dir: str) -> str:
    """A directory that, first on PYTHONPATH, makes ``import watchdog`` fail (werkzeug's
    "auto" reloader then polls with ``stat``); returns it."""
    path = os.path.join(app_dir, "_no_watchdog")
    os.makedirs(os.path.join(path, "watchdog"), exist_ok=True)
    with open(os.path.join(path, "watchdog", "__init__.py"), "w") as handle:
        handle.write('raise ImportError("watchdog disabled by bench/run.py")\n')
    return path


@dataclass
class Result:
    row: Row
    delay: float
    skipped: str = ""
    numbers: RowNumbers | None = None
    import_s: float = 0.0
    timeline: Timeline | None = None
    log_tail: str = ""


def run_row(
    row: Row, delay: float, plan: RunPlan, verbose: bool = True, watchdog: bool = False
) -> Result:
    """Start, load, upgrade and stop one server; never raises for a server's failure.

    The Flask rows use werkzeug's stat reloader (1 s polls) unless *watchdog*: on busy
    machines watchdog's inotify queue overflows and saves are lost."""
    app_dir = make_app_dir(delay)
    env = bench_env(row.env)
    result = Result(row, delay)
    reason = servers.unavailable(row.check, app_dir, env)
    if reason:
        result.skipped = reason
        shutil.rmtree(app_dir, ignore_errors=True)
        if verbose:
            print(f"  {describe(result)}", flush=True)
        return result
    if row.trigger == "file save" and not watchdog:
        env["PYTHONPATH"] = os.pathsep.join([block_watchdog(app_dir), env["PYTHONPATH"]])
    key = (row.import_code, delay)
    if key not in _IMPORT_CACHE:  # the same app, measured once per run of this script
        _IMPORT_CACHE[key] = import_seconds(app_dir, row.import_code, env)
    result.import_s = _IMPORT_CACHE[key]
    port = free_port()
    server = Server(row.argv(port, app_dir), app_dir, env, os.path.join(app_dir, "server.log"))
    try:
        server.wait_answering(port, timeout=60.0)
        if row.grace and row.group != "gunicorn":  # every upgrade warm, on a loaded machine too
            servers.wait_in_log(server, servers.TEMPLATE_READY, 60.0)
        trigger = (lambda: server.signal(signal.SIGHUP)) if row.trigger == "HUP" else (lambda: None)
        if row.trigger == "file save":
            time.sleep(1.5)  # the reloaders take their first snapshot of the files
        result.timeline = run_upgrades(server, port, app_dir, delay, trigger, plan)
        result.numbers = summarize(result.timeline)
    except RuntimeError as exc:
        result.skipped = f"server failed: {str(exc).splitlines()[0]}"
    finally:
        server.stop()
        result.log_tail = server.output(6000, quiet=True)
        shutil.rmtree(app_dir, ignore_errors=True)
    if verbose:
        print(f"  {describe(result)}", flush=True)
    return result


def describe(result: Result) -> str:
    head = f"{result.row.label} ({result.row.trigger}, {result.delay:g} s import)"
    if result.skipped:
        return f"{head}: skipped: {result.skipped}"
    n = result.numbers
    assert n is not None
    failed = {k: v for k, v in n.failures.items() if v}
    return (
        f"{head}: {n.requests} requests, failures {failed or 0}, slow"
        f" {n.slow_completed}/{n.slow_started}, upgrades {n.upgrades_done}/{n.upgrades_tried},"
        f" cutover {[round(c, 2) for c in n.cutover_s]} s, import {result.import_s:.2f} s,"
        f" p99 steady {_ms(n.steady_p99)} window {_ms(n.window_p99)}, stall"
        f" {_ms(n.stall_s)}, {n.rps:.0f} req/s"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _ratio(value: float | None, base: float | None, unit: str = "×") -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}{unit}"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| server | upgrade by | app import | upgrades | requests | refused | reset | timeout"
        " | 5xx | truncated | slow completed | cutover ÷ import | longest stall ÷ import"
        " | p99 upgrade ÷ steady | throughput ÷ peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        row = res.row
        name = f"**{row.label}**" if row.grace else row.label
        if res.skipped or res.numbers is None:
            lines.append(
                f"| {name} | {row.trigger} | {res.delay:g} s | skipped: {res.skipped} |" + " |" * 11
            )
            continue
        n = res.numbers
        cut = f"{statistics.median(n.cutover_s) / res.import_s:.2f}" if n.cutover_s else "never"
        peers = [
            p
            for p in results
            if p.row.group == row.group
            and not p.row.grace
            and p.delay == res.delay
            and p.numbers is not None
        ]
        if row.grace and peers:
            through = ", ".join(
                f"{_ratio(n.rps, p.numbers.rps)} vs {p.row.short}"
                for p in peers
                if p.numbers is not None
            )
        else:
            through = "–"
        f = n.failures
        other = f" (+{f['other']} other)" if f.get("other") else ""
        lines.append(
            f"| {name} | {row.trigger} | {res.delay:g} s ({res.import_s:.2f} s)"
            f" | {n.upgrades_done}/{n.upgrades_tried} | {n.requests} | {f['refused']}"
            f" | {f['reset']} | {f['timeout']} | {f['5xx']} | {f['truncated']}{other}"
            f" | {n.slow_completed}/{n.slow_started} | {cut} | {n.stall_s / res.import_s:.2f}"
            f" | {_ratio(n.window_p99, n.steady_p99)} | {through} |"
        )
    return lines
