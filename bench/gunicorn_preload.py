"""``gunicorn -k grace_plugins.Worker --preload`` (molds): memory and HUP → new code.

On the startproject-shaped site with admin (``bench/apps/djsite``), ``-w 4 --threads 4``, each
round starts, one after the other, ``-k gthread --preload`` (gunicorn's own: the app imported in
the master, HUP keeps the old code), the same with readthedocs' ``gc.freeze()`` before each
fork, ``-k grace_plugins.Worker --preload`` (a mold per generation) and
``-k grace_plugins.Worker`` (each worker imports). Per server: warm up (every worker serves
requests, so Django's lazily imported URLconf is loaded everywhere), PSS of the whole process
tree (master, molds, workers: ``/proc/PID/smaps_rollup``); a long run of admin pages until the
tree stops growing (Django's templates compiled in each worker, the collector's full
collections: what a server that has served for a while holds), PSS again; then 5 HUPs, each
writing a new ``shop/version.py`` and timing HUP → first answer of the new version (polled on
fresh connections every few ms), each waited for until the tree is back to its steady size;
then warm up, PSS, the long run and PSS again. Ratios come from one round (the machine is
shared: absolute times vary from round to round), and the table gives min / median / max over
the rounds.

Usage (from the repository root): ``python bench/gunicorn_preload.py [--rounds N] [--hups N]
[--json FILE]``. Every wait is bounded; every server is stopped by SIGTERM, then SIGKILL of what
it started.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from common import HERE, Server, bench_env, free_port

from tests.harness import BODY, http_get  # on sys.path by common
from tests.harness.procfs import descendants, stat

TUNED = ("-w", "4", "--threads", "4")
ROWS = {
    "gthread --preload": ("-k", "gthread", *TUNED, "--preload"),
    "gthread --preload, gc.freeze()": ("-k", "gthread", *TUNED, "--preload", "-c", "freeze.py"),
    "Worker --preload": ("-k", "grace_plugins.Worker", *TUNED, "--preload"),
    "Worker --preload, GRACE_READY_PATH=/hello": (
        "-k",
        "grace_plugins.Worker",
        *TUNED,
        "--preload",
    ),
    "Worker": ("-k", "grace_plugins.Worker", *TUNED),
}
#: Rows whose environment has the ready check: the mold answers it before forking, so what a
#: first request imports lazily (Django's URLconf, the admin) is imported once, and shared.
READY_CHECKED = {"Worker --preload, GRACE_READY_PATH=/hello": "/hello"}
WARM_REQUESTS = 400
#: The long run: batches of admin pages (Django renders and caches its templates, and the
#: collector's full collections come), until the tree grows by less than 1 % in two batches.
LONG_PATH, LONG_BATCH, LONG_BATCHES, LONG_CLIENTS = "/admin/login/", 3000, 10, 4
#: readthedocs' gunicorn config: the master freezes what it imported before each fork.
FREEZE_CONFIG = "def pre_fork(server, worker):\n    import gc\n\n    gc.freeze()\n"
HUP_TIMEOUT = 60.0
POLL = 0.005


@dataclass
class Row:
    name: str
    pss_before_kb: int = 0
    pss_after_kb: int = 0
    pss_long_before_kb: int = 0  # after the long run (:func:`long_run`)
    pss_long_after_kb: int = 0
    processes: int = 0
    hup_ms: list[float] = field(default_factory=list)
    new_code: int = 0  # HUPs whose new version answered


class Site:
    """The site in a temporary directory (migrated once), and its version module."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="grace-bench-preload-")
        shutil.copytree(os.path.join(HERE, "apps", "djsite"), self.dir, dirs_exist_ok=True)
        self.env = bench_env()
        with open(os.path.join(self.dir, "freeze.py"), "w") as handle:
            handle.write(FREEZE_CONFIG)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"],
            cwd=self.dir,
            env=self.env,
            check=True,
            timeout=120,
        )

    def save(self, version: str) -> None:
        path = os.path.join(self.dir, "shop", "version.py")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            handle.write(f"VERSION = {version!r}\n")
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def tree_pss(pid: int) -> tuple[int, int]:
    """(PSS in kB, process count) of *pid* and every live descendant."""
    root = stat(pid)
    if root is None:
        return 0, 0
    pids = [pid, *(one.pid for one in descendants(root))]
    total = 0
    for one in pids:
        with contextlib.suppress(OSError), open(f"/proc/{one}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total, len(pids)


def answer_of(port: int) -> tuple[int, str]:
    """(pid, version) of one answer on a fresh connection, or (-1, "")."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        found = BODY.search(http_get(port, "/hello", timeout=2).body)
        if found:
            return int(found.group(1)), found.group(2)
    return -1, ""


def warm_up(port: int, server_pid: int) -> None:
    """:data:`WARM_REQUESTS` requests from 8 clients at once, and more until every worker
    answered (so each imported what a first request imports, such as Django's URLconf);
    bounded."""
    workers = set(worker_pids(server_pid))
    seen: set[int] = set()
    lock = threading.Lock()

    def client() -> None:
        for count in range(WARM_REQUESTS):  # an eighth of them, then until every worker served
            pid = pid_of(port)
            with lock:
                seen.add(pid)
                if count >= WARM_REQUESTS // 8 and workers <= seen:
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def long_run(port: int, server_pid: int) -> int:
    """The tree's PSS (kB) once a long run of admin pages no longer makes it grow: two batches
    in a row each grow it by less than 1 % (what a server that has served for a while holds);
    bounded by :data:`LONG_BATCHES`."""
    pss, flat = tree_pss(server_pid)[0], 0
    for _ in range(LONG_BATCHES):
        admin_batch(port)
        time.sleep(0.5)
        before, pss = pss, tree_pss(server_pid)[0]
        flat = flat + 1 if pss < before * 1.01 else 0
        if flat == 2:
            break
    return pss


def admin_batch(port: int) -> None:
    """:data:`LONG_BATCH` requests to :data:`LONG_PATH` from :data:`LONG_CLIENTS` keep-alive
    clients. A failed request or a client still busy after 2 minutes stops the bench."""
    failed: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(LONG_BATCH // LONG_CLIENTS):
                conn.request("GET", LONG_PATH)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"{LONG_PATH} answered {response.status}")
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            failed.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(LONG_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if failed or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"the long run failed: {failed[:1] or 'a client is stuck'}")


def worker_pids(server_pid: int) -> list[int]:
    """The live descendants of the master that serve (a mold never answers: harmless)."""
    root = stat(server_pid)
    return [one.pid for one in descendants(root)] if root is not None else []


def pid_of(port: int) -> int:
    with contextlib.suppress(OSError, http.client.HTTPException):
        found = BODY.search(http_get(port, "/hello", timeout=2).body)
        if found:
            return int(found.group(1))
    return -1


def tree_size(pid: int) -> int:
    return tree_pss(pid)[1]


def wait_settled(pid: int, steady: int, timeout: float = 30.0) -> None:
    """Until the tree is back to *steady* processes (the old workers and mold gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tree_size(pid) != steady:
        time.sleep(0.05)
    time.sleep(0.3)


def measure(name: str, site: Site, hups: int, log_dir: str) -> Row:
    row = Row(name)
    site.save("v1")
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", *ROWS[name], "--bind", f"127.0.0.1:{port}"]
    argv += ["--graceful-timeout", "10", "--timeout", "60"]
    slug = "".join(c if c.isalnum() else "_" for c in name)
    control = os.path.join(log_dir, f"{slug}.ctl")
    argv += ["--control-socket", control] if _has_control_socket() else []
    log = os.path.join(log_dir, f"{slug}.log")
    env = dict(site.env)
    if name in READY_CHECKED:
        env["GRACE_READY_PATH"] = READY_CHECKED[name]
    server = Server([*argv, "djsite.wsgi:application"], site.dir, env, log)
    try:
        server.wait_answering(port, 60)
        warm_up(port, server.pid)
        time.sleep(0.5)
        row.pss_before_kb, row.processes = tree_pss(server.pid)
        row.pss_long_before_kb = long_run(port, server.pid)
        for number in range(2, hups + 2):
            version = f"v{number}"
            # an old worker that never served would import the new views lazily: only a new
            # process answering the new version counts
            old = set(worker_pids(server.pid))
            site.save(version)
            began = time.monotonic()
            server.signal(signal.SIGHUP)
            while time.monotonic() - began < HUP_TIMEOUT:
                pid, answered = answer_of(port)
                if answered == version and pid not in old:
                    row.hup_ms.append((time.monotonic() - began) * 1000)
                    row.new_code += 1
                    break
                if name.startswith("gthread") and time.monotonic() - began > 3.0:
                    break  # its --preload keeps the old code: it never comes
                time.sleep(POLL)
            wait_settled(server.pid, row.processes)
            warm_up(port, server.pid)
        warm_up(port, server.pid)
        time.sleep(0.5)
        row.pss_after_kb = tree_pss(server.pid)[0]
        row.pss_long_after_kb = long_run(port, server.pid)
    finally:
        server.stop()
    return row


def _has_control_socket() -> bool:
    import gunicorn.config

    return any(s.name == "control_socket" for s in gunicorn.config.KNOWN_SETTINGS)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    parts = (min(values), statistics.median(values), max(values))
    return " / ".join(fmt.format(v) for v in parts)


PSS_FIELDS = ("pss_before_kb", "pss_long_before_kb", "pss_after_kb", "pss_long_after_kb")


def table(rounds: list[dict[str, Row]], hups: int) -> str:
    """The markdown table: per server, then the ratios (min / median / max over rounds)."""
    lines = [
        f"`-w 4 --threads 4`, site with admin (`bench/apps/djsite`), {len(rounds)} rounds,"
        f" {hups} HUPs per server per round; min / median / max over the rounds. PSS of the"
        " tree in MB: *warm* once every worker served; *long run* once batches of"
        f" {LONG_BATCH:,} requests to `{LONG_PATH}` no longer make it grow (under 1 % in"
        " two batches in a row).",
        "",
        f"| server | PSS warm | long run | after {hups} HUPs, warm | long run | processes"
        " | HUP → new code (ms, median of the round) | HUPs that served new code |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        rows = [r[name] for r in rounds]
        pss = [spread([getattr(r, field) / 1024 for r in rows], "{:.1f}") for field in PSS_FIELDS]
        medians = [statistics.median(r.hup_ms) for r in rows if r.hup_ms]
        served = f"{sum(r.new_code for r in rows)} of {hups * len(rows)}"
        lines.append(
            f"| `{name}` | {' | '.join(pss)} | {rows[0].processes}"
            f" | {spread(medians, '{:.0f}')} | {served} |"
        )
    ours, theirs, frozen = "Worker --preload", "gthread --preload", "gthread --preload, gc.freeze()"
    checked = next(iter(READY_CHECKED))

    def ratio(top: str, bottom: str, field: str) -> str:
        return spread([getattr(r[top], field) / getattr(r[bottom], field) for r in rounds])

    hup = [
        statistics.median(r["Worker --preload"].hup_ms) / statistics.median(r["Worker"].hup_ms)
        for r in rounds
        if r["Worker --preload"].hup_ms and r["Worker"].hup_ms
    ]
    lines += [
        "",
        "| ratio (one round each) | target | warm | long run | after HUPs, warm | long run |",
        "|---|---|---|---|---|---|",
    ]
    for label, top, bottom in (
        (f"PSS `{ours}` ÷ `{theirs}`", ours, theirs),
        (f"PSS `{ours}` ÷ `{frozen}`", ours, frozen),
        (f"PSS `{checked}` ÷ `{theirs}`", checked, theirs),
    ):
        cells = " | ".join(ratio(top, bottom, field) for field in PSS_FIELDS)
        lines.append(f"| {label} | ≤ 1.0 | {cells} |")
    lines += [
        "",
        "| ratio (one round each) | target | min / median / max |",
        "|---|---|---|",
        f"| HUP → new code, `Worker --preload` ÷ `Worker` | ≤ 0.5 | {spread(hup)} |",
        "",
        "`gthread --preload` serves a new `shop/version.py` on HUP only because Django imports"
        " the URLconf (and through it the views) lazily, in each worker: its settings, models"
        " and apps stay those the master imported (a half reload).",
    ]
    return "\n".join(lines)


def run(rounds: int, hups: int) -> list[dict[str, Row]]:
    """*rounds* rounds of every server in :data:`ROWS` (``bench/run.py`` calls this too)."""
    site = Site()
    log_dir = tempfile.mkdtemp(prefix="grace-bench-preload-logs-")
    results: list[dict[str, Row]] = []
    try:
        for number in range(rounds):
            rows = {name: measure(name, site, hups, log_dir) for name in ROWS}
            results.append(rows)
            summary = ", ".join(
                f"{n}: {r.pss_before_kb // 1024}/{r.pss_long_before_kb // 1024}"
                f"/{r.pss_after_kb // 1024}/{r.pss_long_after_kb // 1024} MB,"
                f" HUP {spread(r.hup_ms, '{:.0f}')} ms"
                for n, r in rows.items()
            )
            print(f"round {number + 1}: {summary}", file=sys.stderr, flush=True)
    finally:
        site.remove()
    shutil.rmtree(log_dir, ignore_errors=True)
    return results


def section(rounds: list[dict[str, Row]], hups: int) -> list[str]:
    """The section of ``docs/benchmarks.md`` (``bench/run.py --sections gunicorn-preload``)."""
    if not rounds:
        return []
    return [
        SECTION_HEADING,
        "",
        "`gunicorn --preload` with our worker (a mold per generation imports the app; its"
        " workers are forked from it) against gunicorn's own `--preload` (the app imported in"
        " the master; HUP keeps the old code) and against our worker without `--preload`;"
        " what the table means and where the memory goes: docs/gunicorn.md.",
        "",
        table(rounds, hups),
        "",
    ]


SECTION_HEADING = "## gunicorn --preload: molds (bench/gunicorn_preload.py)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hups", type=int, default=5)
    parser.add_argument("--json", help="write the raw numbers there")
    args = parser.parse_args()
    rounds = run(args.rounds, args.hups)
    print(table(rounds, args.hups))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                [{n: asdict(r) for n, r in rows.items()} for rows in rounds], handle, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
