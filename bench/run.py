"""Side-by-side upgrade benchmark: grace_plugins against the servers it replaces.

Run it from the repository root, in an environment with the ``dev`` extras installed::

    python bench/run.py            # full run, ~5 minutes; writes docs/benchmarks.md + upgrade.svg
    python bench/run.py --quick    # ~1-2 minutes: the 1 s import app, one upgrade per row
    python bench/run.py --only gunicorn --upgrades 5 --out gunicorn-only.md

Each row starts one server on 127.0.0.1, loads it from client threads (fresh connections,
keep-alive connections that never retry, slow in-flight requests; bounded in time and count),
performs N upgrades and counts what the clients saw. The upgrades are "file save" for the
development servers (the reloader sees ``benchcode.py`` change) and ``kill -HUP`` for the rest;
the same app is served with an import that takes ~0 s and one that takes 1 s. Reported per row,
as ratios because the machines are noisy: failures by kind, slow requests completed, cutover
time (trigger -> first answer from the new code) / bare app-import time, the longest time
without a completed request during an upgrade / bare import time, p99 latency in the upgrade
windows / steady p99, throughput / the peer's. A row whose adapter is not importable is
skipped with a note. It also draws ``docs/upgrade.svg`` (see ``bench/picture.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata

from common import (
    ROOT,
    RowNumbers,
    RunPlan,
    Server,
    Timeline,
    bench_env,
    bin_path,
    free_port,
    import_seconds,
    make_app_dir,
    run_upgrades,
    summarize,
)

EXCLUDE = "*/grace_plugins/*"  # the reloaders watch only the app, not the library
DJANGO_IMPORT = (
    "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'djproject.settings'; import django;"
    " django.setup(); import djproject.urls"
)
GUNICORN_COMMON = ["-w", "2", "--graceful-timeout", "10", "--keep-alive", "5", "--timeout", "30"]


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
        """The label without the command's prefix (``run --reload``, ``gthread``)."""
        words = self.label.strip("`").split()
        return " ".join(words[2:] if words[0] == "gunicorn" else words[1:])


def _flask(*args: str, watch: bool = False) -> Callable[[int, str], list[str]]:
    def argv(port: int, app_dir: str) -> list[str]:
        # flask run loads the app lazily under its reloader, after the reloader chose the
        # directories to watch: name the code file, as a user would with --extra-files.
        extra = ["--extra-files", os.path.join(app_dir, "benchcode.py")] if watch else []
        return [bin_path("flask"), "--app", "flask_app", *args, *extra, "--port", str(port)]

    return argv


def _django(command: str, *args: str) -> Callable[[int, str], list[str]]:
    return lambda port, d: [sys.executable, "manage.py", command, f"127.0.0.1:{port}", *args]


def _gunicorn(*args: str) -> Callable[[int, str], list[str]]:
    return lambda port, d: [
        bin_path("gunicorn"),
        *args,
        *GUNICORN_COMMON,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        d,
        "--control-socket",
        os.path.join(d, "gunicorn.ctl"),
        "flask_app:app",
    ]


ROWS = [
    Row(
        "flask",
        "`flask hotrun --reload`",
        True,
        "file save",
        _flask(
            "hotrun", "--reload", "--exclude-patterns", EXCLUDE, "--drain-timeout", "10", watch=True
        ),
        "import flask_app",
        [bin_path("flask"), "hotrun", "--help"],
    ),
    Row(
        "flask",
        "`flask hotrun`",
        True,
        "HUP",
        _flask("hotrun", "--no-reload", "--drain-timeout", "10"),
        "import flask_app",
        [bin_path("flask"), "hotrun", "--help"],
    ),
    Row(
        "flask",
        "`flask run --reload`",
        False,
        "file save",
        _flask("run", "--reload", "--exclude-patterns", EXCLUDE, watch=True),
        "import flask_app",
    ),
    Row(
        "django",
        "`manage.py runhot`",
        True,
        "file save",
        _django("runhot", "--drain-timeout", "10"),
        DJANGO_IMPORT,
        [sys.executable, "manage.py", "runhot", "--help"],
        {"BENCH_GRACE": "1"},
    ),
    Row("django", "`manage.py runserver`", False, "file save", _django("runserver"), DJANGO_IMPORT),
    Row(
        "gunicorn",
        "`gunicorn -k grace_plugins.Worker`",
        True,
        "HUP",
        _gunicorn("-k", "grace_plugins.Worker", "--threads", "4"),
        "import flask_app",
        [sys.executable, "-c", "import grace_plugins.gunicorn"],
    ),
    Row(
        "gunicorn",
        "`gunicorn -k gthread`",
        False,
        "HUP",
        _gunicorn("-k", "gthread", "--threads", "4"),
        "import flask_app",
    ),
    Row(
        "gunicorn", "`gunicorn -k sync`", False, "HUP", _gunicorn("-k", "sync"), "import flask_app"
    ),
]
IMPORT_DELAYS = (0.0, 1.0)
_IMPORT_CACHE: dict[tuple[str, float], float] = {}
#: Let werkzeug's reloader use watchdog (inotify)? On busy machines its queue overflows and
#: saves are lost, so by default both Flask rows use werkzeug's stat reloader (1 s polls),
#: as Django's runserver does without pywatchman.
WATCHDOG = False


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


def skip_reason(row: Row, app_dir: str, env: dict[str, str]) -> str:
    """Why *row* cannot run yet (its adapter is not importable), or ""."""
    if row.check is None:
        return ""
    try:
        out = subprocess.run(
            row.check, cwd=app_dir, env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(os.path.basename(a) for a in row.check)}` failed: {exc}"
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"adapter not available yet ({last[0][:100]})"
    return ""


def run_row(row: Row, delay: float, plan: RunPlan, verbose: bool = True) -> Result:
    """Start, load, upgrade and stop one server; never raises for a server's failure."""
    app_dir = make_app_dir(delay)
    env = bench_env(row.env)
    result = Result(row, delay)
    reason = skip_reason(row, app_dir, env)
    if reason:
        result.skipped = reason
        shutil.rmtree(app_dir, ignore_errors=True)
        if verbose:
            print(f"  {describe(result)}", flush=True)
        return result
    if row.trigger == "file save" and not WATCHDOG:
        env["PYTHONPATH"] = os.pathsep.join([block_watchdog(app_dir), env["PYTHONPATH"]])
    key = (row.import_code, delay)
    if key not in _IMPORT_CACHE:  # the same app, measured once per run of this script
        _IMPORT_CACHE[key] = import_seconds(app_dir, row.import_code, env)
    result.import_s = _IMPORT_CACHE[key]
    port = free_port()
    server = Server(row.argv(port, app_dir), app_dir, env, os.path.join(app_dir, "server.log"))
    try:
        server.wait_answering(port, timeout=60.0)
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


# -- the report -----------------------------------------------------------------------------------
def machine_facts() -> list[str]:
    versions = []
    for dist in ("flask", "werkzeug", "django", "gunicorn", "grace_plugins"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return [
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        ", ".join(versions),
    ]


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


def write_report(
    path: str,
    results: list[Result],
    command: str,
    plan: RunPlan,
    seconds: float,
    picture: str | None,
) -> None:
    lines = [
        "# Benchmarks: upgrades under load",
        "",
        "Generated by `bench/run.py`; do not edit by hand. Regenerate with:",
        "",
        "```sh",
        "python bench/run.py            # full run (~5 min); --quick for ~1-2 min",
        "python bench/picture.py        # only the picture, docs/upgrade.svg (~1 min)",
        "```",
        "",
        f"This table was made by `{command}` in {seconds:.0f} s on:",
        "",
        *[f"* {fact}" for fact in machine_facts()],
        "",
        "## What each row does",
        "",
        f"Each row starts the server on 127.0.0.1, loads it with {plan.fresh} client threads"
        f" opening a fresh connection per request, {plan.keepalive} reusing a keep-alive"
        f" connection without ever retrying, and {plan.slow} sending slow requests"
        f" (`?sleep={plan.slow_seconds:g}`, in flight across the upgrades); after"
        f" {plan.steady_seconds:g} s of steady load it performs {plan.upgrades} upgrade(s): new"
        " code is written (`benchcode.py`, a new `VERSION`) and the upgrade is triggered by the"
        " reloader seeing the file (*file save*) or by `kill -HUP` to the pid the server"
        f" printed (*HUP*); the next upgrade comes {plan.settle_seconds:g} s after the new"
        " code first answered. The same app is served with an import that takes ~0 s and one"
        " that sleeps 1 s at import (*app import*: the delay, and in brackets the bare import"
        " time of the app in a fresh interpreter, framework included).",
        "",
        "* **requests**: all requests sent; **refused / reset / timeout / 5xx / truncated**:"
        " failed requests by kind, as the client saw them (a keep-alive client never retries,"
        " so a connection closed under it counts);",
        "* **slow completed**: slow requests answered / sent;",
        "* **cutover ÷ import**: median time from the trigger to the first answer from the new"
        " code, divided by the bare import time (a file-save row includes the reloader's"
        " polling delay);",
        "* **longest stall ÷ import**: the longest time, in any upgrade window, during which"
        " no request completed, divided by the bare import time (clients waiting on a port"
        " that nobody accepts on; a p99 can miss this when only the few waiting clients see"
        " it);",
        "* **p99 upgrade ÷ steady**: p99 latency of the quick requests that started in an"
        " upgrade window (trigger to 1 s after the cutover) divided by their p99 before the"
        " first upgrade;",
        "* **throughput ÷ peer**: successful requests per second of the grace_plugins row"
        " divided by the same figure for the server it replaces (same app, same load).",
        "",
        "Ratios, not absolute times: the machines are noisy, and the client threads share the"
        " cores with the server.",
        "",
        "Notes on the setup:",
        "",
        "* a client whose request failed waits 50 ms before its next one, so *refused* counts"
        " how long the port was closed rather than how fast a client can retry;",
        "* the Flask rows use werkzeug's `stat` reloader (1 s polls; Django's runserver polls"
        " the same way without pywatchman): on busy machines watchdog's inotify queue"
        " overflows and saves are lost (`--watchdog` lets werkzeug choose);",
        "* the file-save rows tell the reloader to ignore `*/grace_plugins/*` where it can, and"
        " watch `benchcode.py` (`--extra-files`);",
        "* gunicorn runs 2 workers (`--threads 4` for gthread and grace_plugins.Worker),"
        " `--graceful-timeout 10 --keep-alive 5`; the grace_plugins servers"
        " `--drain-timeout 10`.",
        "",
        "## Results",
        "",
        *table(results),
        "",
    ]
    if picture:
        lines += [
            "## The picture",
            "",
            f"![requests during upgrades]({os.path.basename(picture)})",
            "",
            "Every dot is one request (x: when it started; y: how long it took, log scale),"
            " coloured by the process (pid and code version) that answered it; red crosses are"
            " failed requests; dashed lines are the HUPs. Left: `flask hotrun` with an app that"
            " takes 1 s to import; right: gunicorn's plain HUP (`-k gthread`), same app. A"
            " blank band after a HUP is time in which no request started: every client was"
            " waiting, its connection queued on a socket nobody accepted on while the new code"
            " imported (the few dots high up at its left edge are those waits).",
            "Regenerate with `python bench/picture.py` (or as part of `python bench/run.py`).",
            "",
        ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def public_args(argv: list[str]) -> list[str]:
    """The options that change the results (not where they are written)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--json"):
            skip = True
        elif not arg.startswith(("--out=", "--json=")):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 s import app only, one upgrade per row"
    )
    parser.add_argument("--upgrades", type=int, help="upgrades per row (default 3, quick 1)")
    parser.add_argument("--only", help="run rows whose label or group contains this text")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--json", help="also write every timeline to this JSON file")
    parser.add_argument("--no-picture", action="store_true", help="do not draw upgrade.svg")
    parser.add_argument(
        "--watchdog", action="store_true", help="let werkzeug's reloader use watchdog (inotify)"
    )
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    global WATCHDOG
    WATCHDOG = args.watchdog
    plan = RunPlan(upgrades=1 if args.quick else 3)
    delays = IMPORT_DELAYS
    if args.quick:
        plan.steady_seconds, plan.settle_seconds = 1.5, 1.5
        delays = (1.0,)
    if args.upgrades:
        plan.upgrades = max(1, args.upgrades)
    started = time.monotonic()
    results = []
    for delay in delays:
        for row in ROWS:
            if args.only and args.only not in row.label and args.only != row.group:
                continue
            results.append(run_row(row, delay, plan))
    picture = None
    if not args.no_picture:
        import picture as pic

        picture = os.path.join(os.path.dirname(args.out), "upgrade.svg")
        if pic.render_from_results(results, picture):
            print(f"wrote {picture}")
        else:
            picture = None
    command = " ".join(["python bench/run.py", *public_args(argv or sys.argv[1:])])
    write_report(args.out, results, command, plan, time.monotonic() - started, picture)
    print(f"wrote {args.out}")
    print("\n".join(table(results)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                [
                    {
                        "label": r.row.label,
                        "trigger": r.row.trigger,
                        "delay": r.delay,
                        "skipped": r.skipped,
                        "import_s": r.import_s,
                        "numbers": asdict(r.numbers) if r.numbers else None,
                        "timeline": r.timeline.as_dict() if r.timeline else None,
                        "log_tail": r.log_tail,
                    }
                    for r in results
                ],
                handle,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
