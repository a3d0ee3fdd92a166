"""Keep-alive clients that idle between requests, across HUPs: grace_plugins.Worker vs gthread.

wrk never idles on a connection, so it cannot see this: 4 keep-alive clients pause 3 s between
requests (gunicorn ``--keep-alive 5``) while the master takes 4 HUPs. gthread closes a stopping
worker's idle connections after 2 s, so a client that sends on one finds it reset.

Usage (from the repository root): python bench/keepalive_idle.py [--hups 4] [--pause 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import Load, ServerProcess, wait_until  # noqa: E402

APPS = os.path.join(ROOT, "tests", "apps")
WORKERS = ("grace_plugins.Worker", "gthread")


def _answered(load: Load, count: int) -> Callable[[], bool]:
    """Whether *load*'s clients have made *count* requests (a wait's condition)."""
    return lambda: load.report.requests >= count


def keepalive_idle(worker: str, hups: int, pause: float) -> tuple[int, int]:
    """(failed, total) requests of 4 keep-alive clients idle *pause* s across *hups* HUPs.
    Blocks; every wait bounded."""
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
            with Load(port, fresh=0, keepalive=4, slow=0, keepalive_pause=pause) as load:
                wait_until(lambda: load.report.requests >= 4, 30, "the first round")
                for n in range(1, hups + 1):
                    wait_until(_answered(load, 4 * (n + 1)), 20, "a round")
                    os.kill(server.pid, signal.SIGHUP)
                done = load.report.requests
                wait_until(lambda: load.report.requests >= done + 4, 20, "a last round")
                report = load.stop()
            os.kill(server.pid, signal.SIGTERM)
            server.proc.wait(30)
    return len(report.failures), report.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hups", type=int, default=4)
    parser.add_argument("--pause", type=float, default=3.0)
    args = parser.parse_args()
    for worker in WORKERS:
        failed, total = keepalive_idle(worker, args.hups, args.pause)
        print(
            f"{worker:22s} keep-alive clients idle {args.pause:g} s across {args.hups} HUPs:"
            f" {failed}/{total} failed"
        )


if __name__ == "__main__":
    main()
