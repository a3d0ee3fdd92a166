"""Benchmark: ``-k grace_plugins.Worker`` against gunicorn's own ``-k gthread``.

For each worker class (same workers, threads, keep-alive), with an app that takes 1 s to
import: steady throughput (requests/s from keep-alive and fresh-connection client threads),
then a HUP, and the p99 latency of requests started in the HUP window divided by the steady
p99, plus the failed requests. Everything runs on 127.0.0.1 and stops by itself.

Second part: keep-alive clients idle 3 s between requests (``--keep-alive 5``) across 4 HUPs;
gthread closes a stopping worker's idle connections after 2 s, so some of those clients find
their connection closed.

Usage: python bench/bench_gunicorn.py [--seconds 5] [--workers 2] [--threads 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "apps")
IMPORT_SECONDS = 1.0


class Clients:
    """Client threads recording (start time, latency, ok) for every request."""

    def __init__(self, port: int, keepalive: int = 3, fresh: int = 1) -> None:
        self.port = port
        self.samples: list[tuple[float, float, bool]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keepalive)
        ] + [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, keepalive: bool) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            start = time.monotonic()
            ok = False
            try:
                conn.request("GET", "/hello")
                resp = conn.getresponse()
                ok = resp.status == 200 and b"ospid:" in resp.read()
                if resp.will_close or not keepalive:
                    conn.close()
                    conn = None
            except Exception as exc:  # every failure counts, no retry
                with self._lock:
                    self.errors.append(type(exc).__name__)
                conn.close()
                conn = None
            with self._lock:
                self.samples.append((start, time.monotonic() - start, ok))
        if conn is not None:
            conn.close()


def p99(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run_one(worker: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        code = f"import time\ntime.sleep({IMPORT_SECONDS})\nVERSION = 'v1'\n"
        with open(os.path.join(tmp, "appcode.py"), "w") as handle:
            handle.write(code)
        argv = [
            sys.executable, "-m", "gunicorn", "-k", worker, "--chdir", tmp,
            "--pythonpath", APPS, "--workers", str(args.workers), "--threads", str(args.threads),
            "--keep-alive", "5", "--bind", "127.0.0.1:0", "--log-level", "warning",
            "--control-socket", os.path.join(tmp, "ctl.sock"), "gunicorn_app:app",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.Popen(
            argv + ["--log-level", "info"], env=env, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            port = _wait_port(lines, proc)
            _wait_answer(port)
            with Clients(port) as clients:
                time.sleep(args.seconds)
                steady_end = time.monotonic()
                os.kill(proc.pid, signal.SIGHUP)
                time.sleep(IMPORT_SECONDS + 3.0)
            steady = [s for s in clients.samples if s[0] < steady_end]
            window = [s for s in clients.samples if s[0] >= steady_end]
            steady_rate = len(steady) / args.seconds
            return {
                "rps": steady_rate,
                "p99_steady_ms": p99([s[1] for s in steady if s[2]]) * 1000,
                "p99_hup_ms": p99([s[1] for s in window if s[2]]) * 1000,
                "failed": float(sum(1 for s in clients.samples if not s[2])),
                "requests": float(len(clients.samples)),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(5)
            proc.stderr.close()


def _wait_port(lines: list[str], proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        for line in list(lines):
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        time.sleep(0.05)
    raise SystemExit("gunicorn did not start:\n" + "".join(lines[-20:]))


def _wait_answer(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/hello")
            if conn.getresponse().status == 200:
                conn.close()
                time.sleep(IMPORT_SECONDS + 0.5)  # every worker has imported the app
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer")


def keepalive_idle(worker: str, hups: int = 4, pause: float = 3.0) -> tuple[int, int]:
    """(failed, total) requests of 4 keep-alive clients idle *pause* s across *hups* HUPs."""
    sys.path.insert(0, ROOT)
    from tests.helpers import Load, ServerProcess, wait_until

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "appcode.py"), "w") as handle:
            handle.write("VERSION = 'v1'\n")
        argv = [
            sys.executable, "-m", "gunicorn", "-k", worker, "--chdir", tmp, "--pythonpath", APPS,
            "--workers", "2", "--threads", "4", "--keep-alive", "5", "--bind", "127.0.0.1:0",
            "--control-socket", os.path.join(tmp, "ctl.sock"), "gunicorn_app:app",
        ]  # fmt: skip
        with ServerProcess(argv, cwd=tmp, env={"PYTHONDONTWRITEBYTECODE": "1"}) as server:
            port = int(server.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", 30).group(1))
            _wait_answer(port)
            with Load(port, fresh=0, keepalive=4, slow=0, keepalive_pause=pause) as load:
                for n in range(1, hups + 1):
                    wait_until(lambda n=n: load.report.requests >= 4 * n, 20, "a round")
                    os.kill(server.pid, signal.SIGHUP)
                    time.sleep(1.0)
                done = load.report.requests
                wait_until(lambda: load.report.requests >= done + 4, 20, "a last round")
                report = load.stop()
            os.kill(server.pid, signal.SIGTERM)
            server.proc.wait(30)
    return len(report.failures), report.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="alternating runs; medians kept")
    parser.add_argument("--no-keepalive-idle", action="store_true", help="skip the second part")
    args = parser.parse_args()
    workers = ("grace_plugins.Worker", "gthread")
    runs: dict[str, list[dict[str, float]]] = {w: [] for w in workers}
    for n in range(args.rounds):  # alternate (ABBA...), so a noisy neighbour hurts both alike
        for worker in workers if n % 2 == 0 else workers[::-1]:
            runs[worker].append(run_one(worker, args))
    results = {
        w: {k: statistics.median(r[k] for r in runs[w]) for k in runs[w][0]} for w in workers
    }
    for worker, r in results.items():
        failed = sum(int(x["failed"]) for x in runs[worker])
        total = sum(int(x["requests"]) for x in runs[worker])
        print(
            f"{worker:22s} {r['rps']:8.0f} req/s  p99 steady {r['p99_steady_ms']:7.1f} ms"
            f"  p99 HUP window {r['p99_hup_ms']:7.1f} ms"
            f" (x{r['p99_hup_ms'] / r['p99_steady_ms']:.1f})  failed {failed}/{total}"
            f"  (medians of {args.rounds} runs)"
        )
    ours, theirs = results["grace_plugins.Worker"], results["gthread"]
    print(f"throughput ratio grace_plugins.Worker / gthread = {ours['rps'] / theirs['rps']:.2f}")
    for worker in () if args.no_keepalive_idle else workers:
        failed, total = keepalive_idle(worker)
        print(f"{worker:22s} keep-alive clients idle 3 s across 4 HUPs: {failed}/{total} failed")


if __name__ == "__main__":
    main()
