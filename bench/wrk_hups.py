"""wrk as a second, independent client across repeated HUPs.

Our own client (``common.Load``) attributes every answer to a pid and a code version; wrk knows
nothing of either and simply counts what a C client sees while a server takes N ``kill -HUP``
upgrades of an app that takes 1 s to import: socket errors (connect, read, write, timeout),
non-2xx answers, and the latency tail. Two wrk processes run at once: one on keep-alive
connections, one opening a fresh connection per request (``Connection: close``). Its Lua
script also counts the versions in the bodies, which shows that every upgrade took effect.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import time
from dataclasses import dataclass, field

import servers
import wrk
from common import BODY, Server, bench_env, free_port, make_app_dir, write_code
from throughput import GROUPS, Contender, ms

IMPORT_SECONDS = 1.0
#: (label, connections, close): the two wrk clients that run together.
CLIENTS = (("keep-alive", 4, False), ("fresh", 2, True))
#: HUP-capable servers: every contender of the throughput groups except the development
#: servers that grace_plugins replaces (``flask run`` and ``runserver`` restart on a saved
#: file, not on a signal; the upgrade table covers them).
NO_HUP = ("`flask run`", "`manage.py runserver`")


@dataclass
class Plan:
    hups: int = 3
    interval: float = 2.5  # seconds between HUPs (import 1 s + cutover + drain)
    lead: float = 1.0  # wrk runs alone before the first HUP
    tail: float = 1.5  # and after the last


@dataclass
class HupResult:
    label: str
    hups: int = 0
    runs: dict[str, wrk.WrkResult] = field(default_factory=dict)
    skipped: str = ""


def contenders() -> list[Contender]:
    return [c for _, group in GROUPS for c in group if c.label not in NO_HUP]


def wait_workers(port: int, count: int, timeout: float = 30.0) -> None:
    """Wait until *count* different pids have answered (every gunicorn worker imported the app);
    raises RuntimeError naming what it waited for."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < count:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/hello")
                found = BODY.search(conn.getresponse().read().decode("utf-8", "replace"))
            finally:
                conn.close()
            if found:
                seen.add(found.group(1))
        time.sleep(0.02)
    if len(seen) < count:
        raise RuntimeError(f"waited {timeout:g} s for {count} workers to answer, saw {len(seen)}")


def run_one(c: Contender, wrk_path: str, plan: Plan, verbose: bool = True) -> HupResult:
    """Start *c*, run both wrk clients across ``plan.hups`` HUPs, stop it. Blocks; bounded."""
    result = HupResult(c.label)
    app_dir = make_app_dir(IMPORT_SECONDS)
    env = bench_env(c.env)
    result.skipped = servers.unavailable(c.check, app_dir, env)
    if result.skipped:
        shutil.rmtree(app_dir, ignore_errors=True)
        return result
    port = free_port()
    server = Server(c.argv(port, app_dir), app_dir, env, os.path.join(app_dir, "server.log"))
    loads: list[tuple[str, wrk.Wrk]] = []
    try:
        server.wait_answering(port, timeout=60.0)
        wait_workers(port, 2 if "gunicorn" in c.label else 1)
        seconds = int(plan.lead + plan.hups * plan.interval + plan.tail + 0.999)
        for name, connections, close in CLIENTS:
            load = wrk.Wrk(wrk_path, port, seconds, connections, close=close, count=True)
            loads.append((name, load.start()))
        time.sleep(plan.lead)
        for number in range(plan.hups):
            write_code(app_dir, f"v{number + 2}", IMPORT_SECONDS)
            server.signal(signal.SIGHUP)
            result.hups += 1
            time.sleep(plan.interval)
        for name, load in loads:
            result.runs[name] = load.result()
    except (RuntimeError, wrk.WrkError) as exc:
        result.skipped = f"failed: {str(exc).splitlines()[0]}"
    finally:
        for _, load in loads:
            load.stop()
        server.stop()
        shutil.rmtree(app_dir, ignore_errors=True)
    if verbose:
        print(f"  {describe(result)}", flush=True)
    return result


def describe(r: HupResult) -> str:
    if r.skipped:
        return f"{r.label}: skipped: {r.skipped}"
    parts = [
        f"{name}: {res.requests} requests, socket errors {res.socket_errors}, non-2xx"
        f" {res.non2xx}, max {ms(res.max)}, versions {sorted(res.versions)}"
        for name, res in r.runs.items()
    ]
    return f"{r.label} across {r.hups} HUPs: " + "; ".join(parts)


def table(results: list[HupResult]) -> list[str]:
    lines = [
        "| server | HUPs | wrk connections | requests | connect | read | write | timeout"
        " | non-2xx | p99 | max | versions answering |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        grace = any(c.grace for c in contenders() if c.label == r.label)
        name = f"**{r.label}**" if grace else r.label
        if r.skipped:
            lines.append(f"| {name} | skipped: {r.skipped} |" + " |" * 10)
            continue
        for mode, res in r.runs.items():
            lines.append(
                f"| {name} | {r.hups} | {mode} | {res.requests} | {res.connect} | {res.read}"
                f" | {res.write} | {res.timeout} | {res.non2xx} | {ms(res.p99)} | {ms(res.max)}"
                f" | {len(res.versions)} of {r.hups + 1} |"
            )
    return lines
