"""Warm start, side by side in one run: how soon new code answers, and what it costs in memory.

For the Flask example (``example_flask/app.py``) and a startproject-shaped Django site
(``bench/apps/djsite``: admin, auth, sessions, messages, a models app), it measures

* **cold**: a fresh ``flask run`` / ``runserver --noreload``, from launch to its first answer;
* **warm** and **no-warm**: our upgrade (``flask hotrun`` / ``manage.py runhot``, with
  ``--warm`` and ``--no-warm``), from ``kill -HUP`` to the first answer from the new code;
* **reload**: ``flask run --reload`` (its stat reloader) / ``runserver``, from the save to the
  first new answer;
* memory: RSS and PSS (``/proc/<pid>/smaps_rollup``) of supervisor + template + generation
  (warm), supervisor + generation (no-warm), and the cold server.

Usage: ``python bench/warm.py [--rounds N] [--json out.json]``. Every wait is bounded; every
server is stopped by SIGTERM then SIGKILL of the process group it leads.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.harness import ServerProcess, http_get, write_module  # noqa: E402

PYTHON = sys.executable
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
TEMPLATE_READY = r"\[template (\d+)\] preloaded"
FORKED = r"warm start: pid (\d+) forked from the template"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_answer(port: int, version: str, deadline: float, path: str = "/hello") -> float:
    """Poll (a new connection every ~2 ms) until *version* answers; return when it did."""
    while time.monotonic() < deadline:
        # a reloader that kills its server mid-answer truncates it (http.client's HTTPException)
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            resp = http_get(port, path, timeout=2.0)
            if resp.status == 200 and f"version:{version}" in resp.body:
                return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"no answer from version {version} on port {port}")


class App:
    """One benchmark app in a temporary directory: how to start it and change its version."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.dir = os.path.join(workdir, kind)
        if kind == "flask":
            os.makedirs(self.dir)
            with open(os.path.join(ROOT, "example_flask", "app.py")) as handle:
                self.source = handle.read()
            self.code = os.path.join(self.dir, "app.py")
        else:
            shutil.copytree(os.path.join(HERE, "apps", "djsite"), self.dir)
            self.code = os.path.join(self.dir, "shop", "version.py")
            subprocess.run(
                [PYTHON, "manage.py", "migrate", "-v0"], cwd=self.dir, check=True, timeout=120
            )
        self.version = 0
        self.bump()

    def bump(self) -> str:
        """Write the next version (as an editor saves); return its name."""
        self.version += 1
        name = f"v{self.version}"
        if self.kind == "flask":
            write_module(
                self.code,
                re.sub(r'^VERSION = ".*"$', f'VERSION = "{name}"', self.source, flags=re.M),
            )
        else:
            write_module(self.code, f"VERSION = {name!r}\n")
        return name

    def argv(self, mode: str, port: int) -> list[str]:
        address = f"127.0.0.1:{port}"
        if self.kind == "flask":
            base = [FLASK, "--app", "app.py"]
            return {
                "cold": [*base, "run", "-p", str(port), "--no-reload"],
                "reload": [*base, "run", "-p", str(port), "--reload"],
                "warm": [*base, "hotrun", "-p", str(port), "--no-reload", "--warm"],
                "no-warm": [*base, "hotrun", "-p", str(port), "--no-reload", "--no-warm"],
            }[mode]
        manage = [PYTHON, "manage.py"]
        return {
            "cold": [*manage, "runserver", address, "--noreload"],
            "reload": [*manage, "runserver", address],
            "warm": [*manage, "runhot", address, "--noreload", "--warm"],
            "no-warm": [*manage, "runhot", address, "--noreload", "--no-warm"],
        }[mode]

    def start(self, mode: str, port: int) -> ServerProcess:
        env = {"PYTHONDONTWRITEBYTECODE": "1"}
        if mode == "reload" and self.kind == "flask":
            # werkzeug prefers watchdog, whose inotify queue overflows on a busy machine (seen:
            # no reload at all); a watchdog that fails to import makes it use the stat reloader,
            # as on any machine without watchdog installed.
            fake = os.path.join(os.path.dirname(self.dir), "no-watchdog", "watchdog")
            os.makedirs(fake, exist_ok=True)
            with open(os.path.join(fake, "__init__.py"), "w") as handle:
                handle.write("raise ImportError('the benchmark uses the stat reloader')\n")
            env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.dirname(fake)])
        return ServerProcess(self.argv(mode, port), cwd=self.dir, env=env)


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of *pid* in kB, from /proc/<pid>/smaps_rollup (0, 0 if unreadable)."""
    values = {"Rss": 0, "Pss": 0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1])
    return values["Rss"], values["Pss"]


def stop(server: ServerProcess) -> None:
    with contextlib.suppress(Exception):
        server.stop(20)
    server.close()


def measure_cold(app: App, rounds: int) -> tuple[list[float], tuple[int, int]]:
    times, mem = [], (0, 0)
    for _ in range(rounds):
        port = free_port()
        began = time.monotonic()
        server = app.start("cold", port)
        try:
            times.append(first_answer(port, f"v{app.version}", began + 60) - began)
            mem = memory(server.pid)
        finally:
            stop(server)
    return times, mem


def measure_ours(app: App, mode: str, rounds: int) -> tuple[list[float], dict[str, tuple]]:
    port = free_port()
    server = app.start(mode, port)
    times, mem = [], {}
    try:
        server.wait_ready(60)
        if mode == "warm":
            server.wait_for(TEMPLATE_READY, 60)
        last = time.monotonic()
        for _ in range(rounds):
            # upgrades start at most once per --upgrade-interval (1 s): never measure the pacing
            time.sleep(max(0.0, last + 1.2 - time.monotonic()))
            version = app.bump()
            mark = server.mark()
            began = last = time.monotonic()
            os.kill(server.pid, signal.SIGHUP)
            times.append(first_answer(port, version, began + 60) - began)
            if mode == "warm":
                server.wait_for(FORKED, 5, after=mark)  # measured warm, not a fallback
            server.wait_for(r"exited after draining", 30, after=mark)
        gen = http_get(port, "/hello").pid
        mem["supervisor"] = memory(server.pid)
        mem["generation"] = memory(gen)
        if mode == "warm":
            template = int(re.findall(TEMPLATE_READY, server.output())[-1])
            mem["template"] = memory(template)
    finally:
        stop(server)
    return times, mem


def measure_reload(app: App, rounds: int) -> list[float]:
    port = free_port()
    server = app.start("reload", port)
    times = []
    try:
        first_answer(port, f"v{app.version}", time.monotonic() + 60)
        for _ in range(rounds):
            time.sleep(1.1)  # a save in a later second than the reloader's last scan
            began = time.monotonic()
            version = app.bump()
            try:
                times.append(first_answer(port, version, began + 15) - began)
            except TimeoutError:  # seen: watchdog's inotify queue overflowing on a busy machine
                print(f"{app.kind} reload: new code not served within 15 s", file=sys.stderr)
                break
    finally:
        stop(server)
    return times


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {
        "min": round(min(values) * 1000, 1),
        "median": round(statistics.median(values) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


def run(kind: str, rounds: int, workdir: str) -> dict:
    app = App(kind, workdir)
    cold, cold_mem = measure_cold(app, rounds)
    warm, warm_mem = measure_ours(app, "warm", rounds)
    nowarm, nowarm_mem = measure_ours(app, "no-warm", rounds)
    reload = measure_reload(app, max(2, rounds // 2))
    cold_median = statistics.median(cold)
    ratio = [t / cold_median for t in warm]
    return {
        "app": kind,
        "cold_ms": summary(cold),
        "warm_ms": summary(warm),
        "no_warm_ms": summary(nowarm),
        "reload_ms": summary(reload),
        "warm_over_cold": {
            k: round((v or 0) / 1000 / cold_median, 3) for k, v in summary(warm).items()
        },
        "no_warm_over_cold": round(statistics.median(nowarm) / cold_median, 3),
        "warm_ratios": [round(r, 3) for r in ratio],
        "memory_kb": {
            "cold": dict(zip(("rss", "pss"), cold_mem, strict=True)),
            "warm": {k: dict(zip(("rss", "pss"), v, strict=True)) for k, v in warm_mem.items()},
            "no_warm": {
                k: dict(zip(("rss", "pss"), v, strict=True)) for k, v in nowarm_mem.items()
            },
        },
    }


def table(results: list[dict]) -> str:
    rows = ["| app | cold | warm upgrade | no-warm upgrade | reload | warm/cold min/med/max |"]
    rows.append("|---|---|---|---|---|---|")
    for r in results:
        w = r["warm_over_cold"]
        rows.append(
            f"| {r['app']} | {r['cold_ms']['median']} ms | {r['warm_ms']['median']} ms |"
            f" {r['no_warm_ms']['median']} ms | {r['reload_ms']['median']} ms |"
            f" {w['min']} / {w['median']} / {w['max']} |"
        )
    rows.append("")
    rows.append("| app | cold PSS | warm PSS (sup + template + gen) | no-warm PSS (sup + gen) |")
    rows.append("|---|---|---|---|")
    for r in results:
        m = r["memory_kb"]
        warm = sum(v["pss"] for v in m["warm"].values())
        nowarm = sum(v["pss"] for v in m["no_warm"].values())
        parts = ", ".join(f"{k} {v['pss']}" for k, v in m["warm"].items())
        rows.append(f"| {r['app']} | {m['cold']['pss']} kB | {warm} kB ({parts}) | {nowarm} kB |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--apps", default="flask,django")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as workdir:
        for kind in args.apps.split(","):
            results.append(run(kind, args.rounds, workdir))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
