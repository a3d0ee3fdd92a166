"""Benchmark of the Flask adapter (not a test): prints a small Markdown table.

1. Throughput: ``flask --app example_flask/app.py hotrun`` (threaded, the default) against
   ``flask --app example_flask/app.py run`` (werkzeug's ``run_simple(threaded=True)``) on the
   same app, same machine: client threads on 127.0.0.1 send GET /hello on fresh connections
   for a fixed duration each.
2. Cutover: time from ``kill -HUP`` to the first response from the new process, against the
   time a fresh interpreter takes to import the app (the floor any restart pays).

Usage (from the repository root)::

    python bench/bench_flask.py [--seconds 5] [--clients 4] [--upgrades 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join("example_flask", "app.py")
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
#: Seconds between two upgrades: a HUP soon after the previous upgrade is queued by the
#: supervisor, which would measure its spacing rather than the cutover.
UPGRADE_SPACING = 1.5


class Server:
    """A server process whose output is read in a thread (bounded waits on its lines)."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if '"GET /' in line:  # request log lines: only counted, never stored
                continue
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    found = regex.search(line)
                    if found:
                        return found
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise SystemExit(f"waited for {pattern!r}; output:\n" + "\n".join(self.lines))
                self.cond.wait(0.2)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def get(port: int, timeout: float = 10.0) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/hello")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def throughput(port: int, seconds: float, clients: int) -> tuple[float, int]:
    """Requests per second over *seconds* with *clients* threads; also the failure count."""
    counts = [0] * clients
    failures = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop:
            try:
                if "ospid:" in get(port):
                    counts[index] += 1
                else:
                    failures[index] += 1
            except OSError:
                failures[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return sum(counts) / (time.monotonic() - start), sum(failures)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_answering(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(port, 2.0)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def bench_werkzeug(seconds: float, clients: int) -> tuple[float, int]:
    port = free_port()
    server = Server([FLASK, "--app", APP, "run", "-p", str(port)])
    try:
        wait_answering(port)
        return throughput(port, seconds, clients)
    finally:
        server.stop()


def bench_hotrun(seconds: float, clients: int, upgrades: int) -> dict[str, float]:
    server = Server([FLASK, "--app", APP, "hotrun", "-p", "0"])
    try:
        server.wait_for(r"generation 1 \(pid \d+\) ready")
        port = int(server.wait_for(r"serving tcp:[\d.]+:(\d+)").group(1))
        rps, failures = throughput(port, seconds, clients)
        cutovers, ready = [], []
        for _ in range(upgrades):
            time.sleep(UPGRADE_SPACING)  # the supervisor spaces upgrades; measure no queueing
            mark = server.mark()
            sent = time.monotonic()
            os.kill(server.proc.pid, signal.SIGHUP)
            found = server.wait_for(r"generation \d+ \(pid (\d+)\) ready after (\d+) ms", 30, mark)
            new_pid = found.group(1)
            while f"ospid:{new_pid} " not in get(port):
                if time.monotonic() - sent > 30:
                    raise SystemExit("the new generation never answered")
            cutovers.append((time.monotonic() - sent) * 1000)
            ready.append(float(found.group(2)))
            server.wait_for(r"exited after draining", 30, mark)
        return {
            "rps": rps,
            "failures": failures,
            "cutover_ms": statistics.median(cutovers),
            "ready_ms": statistics.median(ready),
        }
    finally:
        server.stop()


def import_ms(runs: int) -> tuple[float, float]:
    """Medians of: the app's import time measured in process, and the wall time of a fresh
    ``flask --app APP routes`` (interpreter + CLI start-up + app import: what any restart of
    ``flask run`` pays too)."""
    code = (
        "import sys, time; t = time.perf_counter(); sys.path.insert(0, 'example_flask');"
        " import app; print((time.perf_counter() - t) * 1000)"
    )
    inside, cli = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        inside.append(float(out))
        start = time.monotonic()
        subprocess.run([FLASK, "--app", APP, "routes"], cwd=ROOT, capture_output=True, check=True)
        cli.append((time.monotonic() - start) * 1000)
    return statistics.median(inside), statistics.median(cli)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--upgrades", type=int, default=5)
    args = parser.parse_args()

    base_rps, base_failures = bench_werkzeug(args.seconds, args.clients)
    hot = bench_hotrun(args.seconds, args.clients, args.upgrades)
    imported, cli = import_ms(args.upgrades)

    print(
        f"Flask adapter, {args.clients} client threads, {args.seconds:g} s each, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| werkzeug `run_simple(threaded=True)` (`flask run`) | {base_rps:.0f} req/s"
        f" ({base_failures} failed) |"
    )
    print(f"| `flask hotrun` (threaded) | {hot['rps']:.0f} req/s ({hot['failures']:.0f} failed) |")
    print(f"| throughput ratio hotrun ÷ run_simple | {hot['rps'] / base_rps:.2f} |")
    print(
        f"| cutover: `kill -HUP` → first response from the new pid (median of"
        f" {args.upgrades}) | {hot['cutover_ms']:.0f} ms |"
    )
    print(f"| new generation ready (supervisor log, median) | {hot['ready_ms']:.0f} ms |")
    print(f"| bare app import, in process (median) | {imported:.0f} ms |")
    print(f"| fresh `flask --app … routes`: start-up + app import (median) | {cli:.0f} ms |")
    print(f"| cutover ÷ in-process app import | {hot['cutover_ms'] / imported:.2f} |")
    print(f"| cutover ÷ fresh `flask` start-up + import | {hot['cutover_ms'] / cli:.2f} |")


if __name__ == "__main__":
    main()
