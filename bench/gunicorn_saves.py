"""``gunicorn --reload``: save → first answer from the new code, against the same server's HUP.

Each row starts gunicorn on the bench's Flask app, loads it with the end-to-end harness's
clients (fresh connections, keep-alive connections that never retry, idle keep-alive ones:
``bench/saves.py``'s), saves the version module N times (default 10) a fixed interval apart
(2.5 s), then saves code that fails at import, waits for the rollback (or 3 s), and saves the
fix. With our worker, each save is followed one interval later by a ``kill -HUP`` with nothing
changed, on the same server (as ``bench/saves.py`` does for hotrun and runhot): HUP → the first
answer from a worker of the generation it started is the upgrade's own time, so save ÷ HUP,
measured side by side under the same conditions, is what the watcher adds. Per row: save → first
answer of its version, and HUP → first answer of its generation (min / median / max); the
stall, two ways: the longest pause of the whole server (the longest
time between two answers, whichever client got them) and the longest single request, each also
over a quiet stretch of the same length before the first trigger (no upgrade: what the 2-core
machine's noise alone gives); the requests that failed, and those that failed between the broken
save and the fix's first answer.

Rows: ``-k grace_plugins.Worker --reload`` with ``-w 2 --threads 4`` and with gunicorn's
defaults (one worker, one thread), and ``-k gthread -w 2 --threads 4 --reload`` (gunicorn's own
reloader: each worker restarts itself; no HUP). Ratios come from one row.

Usage (from the repository root): ``python bench/gunicorn_saves.py [--saves N] [--interval S]
[--rows KEY,...] [--json FILE]``. Every wait is bounded; every server is stopped by SIGTERM,
then SIGKILL of what it started.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import saves
from common import Server, bench_env, bin_path, free_port
from saves_tables import spread
from servers import wait_in_log

from tests.harness import Outcome, write_module  # on sys.path by common
from tests.harness.gunicorn import PROMOTED as PROMOTED_LINE

BROKEN = "raise RuntimeError('broken on purpose')\n"
#: Seconds between two triggers (``--interval``; bench/run.py's section uses it as is).
INTERVAL = 2.5
TUNED = ("-w", "2", "--threads", "4")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    args: tuple[str, ...]
    hups: bool  # a HUP with nothing changed one interval after each save (our worker)


ROWS = [
    Row("ours", "`-k grace_plugins.Worker -w 2 --threads 4 --reload`",
        ("-k", "grace_plugins.Worker", *TUNED, "--reload"), True),
    Row("defaults", "`-k grace_plugins.Worker --reload` (gunicorn's defaults)",
        ("-k", "grace_plugins.Worker", "--reload"), True),
    Row("gthread", "`-k gthread -w 2 --threads 4 --reload`",
        ("-k", "gthread", *TUNED, "--reload"), False),
]  # fmt: skip
PROMOTED = re.compile(PROMOTED_LINE.format(gen=r"\d+"))


class Clients(saves.SaveLoad):
    """``bench/saves.py``'s clients, also keeping when each answer came (and how long it took)
    and when each failure."""

    def __init__(self, port: int, max_seconds: float) -> None:
        super().__init__(port, max_seconds)
        self.answered: list[tuple[float, float]] = []  # (start, end) of each answer
        self.failed_at: list[float] = []

    def record(self, outcome: Outcome) -> None:
        super().record(outcome)
        if outcome.failure or outcome.response is None:
            self.failed_at.append(outcome.end)
        else:
            self.answered.append((outcome.start, outcome.end))

    def stalls(self, begin: float, end: float) -> tuple[float, float, float]:
        """Between *begin* and *end*: the longest pause (ms between two answers, whoever got
        them), when it began, and the longest request (ms, started in the stretch)."""
        ends = sorted(done for _, done in self.answered if begin <= done < end)
        pause, since = max(((b - a, a) for a, b in itertools.pairwise(ends)), default=(0.0, 0.0))
        request = max((e - s for s, e in self.answered if begin <= s < end), default=0.0)
        return round(pause * 1000), since, round(request * 1000)


@dataclass
class Result:
    key: str
    label: str
    latencies_ms: list[float] = field(default_factory=list)  # save -> its version answers
    hup_ms: list[float] = field(default_factory=list)  # HUP -> its generation answers
    never_served: int = 0
    hups_never_served: int = 0
    longest_ms: float = 0.0  # the longest request, from the first trigger on
    longest_pause_ms: float = 0.0  # the longest time between two answers, from then on
    pause_after: str = ""  # the trigger the longest pause followed, and how long after it
    quiet_longest_ms: float = 0.0  # the same two over a quiet stretch before the first trigger
    quiet_pause_ms: float = 0.0
    requests: int = 0
    failed: int = 0
    failed_while_broken: int = 0
    broken_rolled_back: bool = False
    load_average: tuple[float, float] = (0.0, 0.0)
    skipped: str = ""


def argv(row: Row, port: int, app_dir: str) -> list[str]:
    return [
        bin_path("gunicorn"), *row.args,
        "--graceful-timeout", "10", "--timeout", "30",
        "-b", f"127.0.0.1:{port}", "--chdir", app_dir,
        "--control-socket", os.path.join(app_dir, "gunicorn.ctl"),
        "flask_app:app",
    ]  # fmt: skip


def run_row(row: Row, count: int, interval: float) -> Result:
    result = Result(row.key, row.label)
    began = os.getloadavg()[0]
    app = saves.App("minimal")
    port = free_port()
    server = Server(argv(row, port, app.dir), app.dir, bench_env(), f"{app.dir}/server.log")
    load: Clients | None = None
    quiet_from = first_trigger = 0.0
    triggers: list[tuple[float, str]] = []  # (when, what) of each save and HUP
    try:
        server.wait_answering(port, timeout=60.0)
        events = count * (2 if row.hups else 1)
        load = Clients(port, max_seconds=events * interval + 90.0)
        load.start()
        time.sleep(2.0)
        quiet_from = time.monotonic()
        time.sleep(events * interval / 2)  # as long as half the triggers' stretch
        first_trigger = time.monotonic()
        for number in range(count):
            version = f"v{number + 2}"
            saved = save(app, version)
            triggers.append((saved, f"save {number + 1}"))
            wait_answer(load, version, interval)
            answered = load.first_answer.get(version)
            if answered is None:
                result.never_served += 1
            else:
                result.latencies_ms.append(round((answered - saved) * 1000, 1))
            time.sleep(max(0.0, saved + interval - time.monotonic()))
            if row.hups:
                sent = time.monotonic()
                triggers.append((sent, f"HUP {number + 1}"))
                took = hup(server, load, version, interval)
                if took is None:
                    result.hups_never_served += 1
                else:
                    result.hup_ms.append(took)
                time.sleep(max(0.0, sent + interval - time.monotonic()))
        broken_at = save(app, None)
        triggers.append((broken_at, "the broken save"))
        result.broken_rolled_back = wait_in_log(server, "rolled back", 15.0)
        time.sleep(max(0.0, broken_at + 3.0 - time.monotonic()))
        triggers.append((save(app, "fixed"), "the fix"))
        wait_answer(load, "fixed", 30.0)
        fixed = load.first_answer.get("fixed", time.monotonic())
        result.failed_while_broken = sum(broken_at <= t <= fixed for t in load.failed_at)
    except RuntimeError as exc:
        result.skipped = f"server failed: {str(exc).splitlines()[0]}"
    finally:
        if load is not None:
            load.stop()
            if first_trigger:
                result.quiet_pause_ms, _, result.quiet_longest_ms = load.stalls(
                    quiet_from, first_trigger
                )
                pause, since, result.longest_ms = load.stalls(first_trigger, time.monotonic())
                result.longest_pause_ms = pause
                result.pause_after = after_which(triggers, since)
            result.requests, result.failed = load.requests, len(load.failed_at)
        server.stop()
        result.load_average = (began, os.getloadavg()[0])
        app.remove()
    print(f"  {describe(result)}", flush=True)
    return result


def save(app: saves.App, version: str | None) -> float:
    """Save *version* (broken code for None); when it was saved."""
    if version is None:
        write_module(app.module, BROKEN)
    else:
        app.save(version)
    return time.monotonic()


def hup(server: Server, load: Clients, version: str, timeout: float) -> float | None:
    """``kill -HUP`` with *version* on disk and served; ms until a worker of the generation it
    started (named by its ready line) first answered, or None if none did within *timeout*."""
    log = server.log_path or ""
    offset = os.path.getsize(log)
    sent = time.monotonic()
    server.signal(signal.SIGHUP)
    deadline = sent + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as handle:
            handle.seek(offset)
            found = PROMOTED.search(handle.read().decode(errors="replace"))
        pids = [int(pid) for pid in found.group(1).split(",")] if found else []
        answers = [load.first_of_process.get((pid, version)) for pid in pids]
        first = min((when for when in answers if when is not None), default=None)
        if first is not None:
            return round((first - sent) * 1000, 1)
        time.sleep(0.01)
    return None


def after_which(triggers: list[tuple[float, str]], moment: float) -> str:
    """The last trigger before *moment*, and how long after it *moment* came: where a pause
    began."""
    before = [(when, what) for when, what in triggers if when <= moment]
    if not before:
        return "before the first trigger"
    when, what = before[-1]
    return f"{(moment - when) * 1000:,.0f} ms after {what}"


def wait_answer(load: Clients, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while version not in load.first_answer and time.monotonic() < deadline:
        time.sleep(0.01)


def describe(res: Result) -> str:
    if res.skipped:
        return f"{res.label}: skipped: {res.skipped}"
    hups = f", HUP {spread(res.hup_ms)}" if res.hup_ms else ""
    return (
        f"{res.label}: save {spread(res.latencies_ms)}{hups}, never served {res.never_served},"
        f" longest pause {res.longest_pause_ms:,.0f} ms (quiet {res.quiet_pause_ms:,.0f};"
        f" began {res.pause_after}),"
        f" longest request {res.longest_ms:,.0f} ms (quiet {res.quiet_longest_ms:,.0f}),"
        f" failed {res.failed} of {res.requests:,}"
        f" ({res.failed_while_broken} while broken; rolled back: {res.broken_rolled_back})"
        f" (load average {res.load_average[0]:.1f} → {res.load_average[1]:.1f})"
    )


def table(results: list[Result]) -> list[str]:
    lines = [
        "| server | save → new code, min / median / max | HUP → new generation, min / median /"
        " max | save ÷ HUP (medians) | longest pause (quiet) | longest request (quiet) | failed"
        " (while broken) | broken code rolled back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        if res.skipped:
            lines.append(f"| {res.label} | skipped: {res.skipped} | | | | | | |")
            continue
        ratio = (
            f"{statistics.median(res.latencies_ms) / max(statistics.median(res.hup_ms), 0.1):.2f}"
            if res.latencies_ms and res.hup_ms
            else "–"
        )
        lines.append(
            f"| {res.label} | {spread(res.latencies_ms)}{_missed(res.never_served)}"
            f" | {spread(res.hup_ms) if res.hup_ms else '–'}{_missed(res.hups_never_served)}"
            f" | {ratio}"
            f" | {res.longest_pause_ms:,.0f} ms ({res.quiet_pause_ms:,.0f})"
            f" | {res.longest_ms:,.0f} ms ({res.quiet_longest_ms:,.0f})"
            f" | {res.failed} of {res.requests:,} ({res.failed_while_broken})"
            f" | {'yes' if res.broken_rolled_back else 'no'} |"
        )
    return lines


def _missed(count: int) -> str:
    return f" ({count} never served)" if count else ""


def section(results: list[Result], count: int, interval: float) -> list[str]:
    """The section of ``docs/benchmarks.md`` (``bench/run.py --sections gunicorn-saves``)."""
    if not results:
        return []
    text = (
        "gunicorn on the Flask example, loaded by the end-to-end harness's clients (as above),"
        " left alone for half the length of its triggers (the *quiet* figures), then its"
        f" version module saved {count} times; with our worker each save is followed,"
        f" {interval:g} s later, by a `kill -HUP` with nothing changed on the same server"
        " (*HUP → new generation*: from the HUP to the first answer from a worker its ready"
        " line names, the upgrade's own time), and the next save comes"
        f" {interval:g} s after that; then code that fails at import is saved, and its fix"
        " 3 s later. *longest pause*: the longest time in which the server answered no client"
        " (the whole server's stall); *longest request*: the slowest single answer, which on"
        " 2 cores shared with the clients also measures the clients' own scheduling (compare"
        " each with its quiet figure). *failed (while broken)*: requests that failed in the"
        " whole row, and between the broken save and the fix's first answer. gthread restarts"
        " each worker itself on a save."
    )
    return [
        "## gunicorn --reload: save → new code (bench/gunicorn_saves.py)",
        "",
        text,
        "",
        *table(results),
        "",
    ]


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=10, help="good saves per row (10)")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds apart")
    parser.add_argument("--rows", default="", help="comma-separated keys (default: all)")
    parser.add_argument("--json", help="write every number here")
    opts = parser.parse_args(args)
    keys = [r.key for r in ROWS]
    wanted = opts.rows.split(",") if opts.rows else keys
    if set(wanted) - set(keys):
        parser.error(f"unknown rows: use some of {', '.join(keys)}")
    print(f"{opts.saves} saves, {opts.interval:g} s apart, per row:", flush=True)
    results = [run_row(row, opts.saves, opts.interval) for row in ROWS if row.key in wanted]
    print("\n".join(["", *table(results)]))
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
