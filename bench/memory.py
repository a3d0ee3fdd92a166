"""Idle memory and CPU of each server's whole process tree, ours against the server it replaces.

Every server of a round is started at once, side by side (so a library page shared with the
machine's other processes is split the same way for all of them), warmed up with a few requests,
left to settle, then read from ``/proc`` twice, a window apart (default 60 s): PSS, USS and RSS
from ``/proc/<pid>/smaps_rollup`` for every process of the tree (the process started, and every
descendant: supervisor, generation, warm-start template; runserver's reloader parent and child;
gunicorn's master and worker), and the CPU (utime + stime of ``/proc/<pid>/stat``) each spent in
the window. Ratios are taken within a round (ours ÷ theirs, read at the same moment) and given as
min / median / max over the rounds (default 3).

A reloader that spins (werkzeug's watchdog reloader, as installed) is measured in a phase of its
own, with a window of at most ``--alone-seconds``, so it does not share the cores with the rest.

Usage: ``python bench/memory.py [--rounds N] [--seconds S] [--settle S] [--json FILE]``.
Every wait is bounded; every server is stopped by SIGTERM, then SIGKILL of what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import memory_tables
import servers
from common import HERE, Server, bench_env, free_port, make_app_dir
from procmem import CLOCK_TICKS, Proc, read_proc
from upgrades import block_watchdog

from tests.harness import http_get, procfs  # on sys.path by common

SITE_SETTINGS = {"site": "djsite.settings", "many": "djsite.settings_many"}
WARMUP = {
    "flask": ("/hello",),
    "site": ("/hello", "/admin/login/"),
    "many": ("/hello", "/admin/login/", "/sitemap.xml", "/feed/"),
}


@dataclass(frozen=True)
class Contender:
    """One server: its command line, its app, and what its processes are called."""

    key: str
    label: str
    app: str  # "flask" (bench/apps), "site" or "many" (bench/apps/djsite, two settings)
    argv: servers.Argv
    top: str  # the process the user started: supervisor, master, reloader, server
    serving: str  # the process that answers: generation, worker, server
    grace: bool = False
    stat_reloader: bool = False  # werkzeug polls (watchdog made unimportable)
    alone: bool = False  # measured in a phase of its own (it spins)
    upgrades: int = 0  # HUPs before the warm-up (ours: the generation is then a warm fork)
    again: bool = False  # ours: run once before (its seed: the first generation is forked)


def ours(key: str, label: str, app: str, argv: servers.Argv, top: str = "supervisor") -> Contender:
    serving = "worker" if top == "master" else "generation"
    return Contender(key, label, app, argv, top, serving, grace=True)


def theirs(key: str, label: str, app: str, argv: servers.Argv, **kw: bool) -> Contender:
    top, serving = ("master", "worker") if "gunicorn" in key else ("reloader", "server")
    return Contender(key, label, app, argv, top, serving, **kw)


def gunicorn_argv(worker: str) -> servers.Argv:
    """gunicorn serving ``flask_app:app`` with one worker of class *worker*."""
    return lambda port, d: [
        servers.bin_path("gunicorn"), "-k", worker, "-w", "1", "-b", f"127.0.0.1:{port}",
        "--control-socket", os.path.join(d, f"gunicorn-{port}.ctl"), "--chdir", d,
        "flask_app:app",
    ]  # fmt: skip


DJ, FL = servers.django, servers.flask
ONE = "(1 worker, 1 thread: gunicorn's defaults)"
BASE = [
    ours("site-runhot", "`runhot`", "site", DJ("runhot")),
    ours("site-runhot-noreload", "`runhot --noreload`", "site", DJ("runhot", "--noreload")),
    theirs("site-runserver", "`runserver`", "site", DJ("runserver")),
    ours("many-runhot", "`runhot`", "many", DJ("runhot")),
    theirs("many-runserver", "`runserver`", "many", DJ("runserver")),
    ours("hotrun", "`flask hotrun --reload`", "flask", FL("hotrun", "--reload")),
    ours("hotrun-noreload", "`flask hotrun --no-reload`", "flask", FL("hotrun", "--no-reload")),
    theirs("flask-run-stat", "`flask run --reload` (stat)", "flask", FL("run", "--reload"),
           stat_reloader=True),
    theirs("flask-run", "`flask run --reload` (watchdog)", "flask", FL("run", "--reload"),
           alone=True),
    ours("gunicorn-grace", f"`gunicorn -k grace_plugins.Worker` {ONE}", "flask",
         gunicorn_argv("grace_plugins.Worker"), top="master"),
    theirs("gunicorn-gthread", f"`gunicorn -k gthread` {ONE}", "flask", gunicorn_argv("gthread")),
]  # fmt: skip
#: Measured also after one HUP (ours: the generation is then forked from the template).
UPGRADED = ("site-runhot", "many-runhot", "hotrun", "gunicorn-grace", "gunicorn-gthread")
#: Measured also when started again (ours: the first generation forked from the last run's).
AGAIN = ("site-runhot", "many-runhot", "hotrun")


def with_upgraded(base: list[Contender]) -> list[Contender]:
    """Each contender, followed by its "after one HUP" twin if it is one of ``UPGRADED``
    and its "started again" twin if it is one of ``AGAIN``."""
    found = []
    for c in base:
        found.append(c)
        if c.key in UPGRADED:
            label = f"{c.label}, after one HUP"
            found.append(dataclasses.replace(c, key=f"{c.key}-up", label=label, upgrades=1))
        if c.key in AGAIN:
            label = f"{c.label}, started again"
            found.append(dataclasses.replace(c, key=f"{c.key}-again", label=label, again=True))
    return found


CONTENDERS = with_upgraded(BASE)
BY_KEY = {c.key: c for c in CONTENDERS}


@dataclass
class Running:
    """A contender started for one round: its server, and which pid plays which part."""

    contender: Contender
    server: Server
    port: int
    serving_pid: int = 0
    template_pid: int = 0
    note: str = ""

    def role(self, pid: int) -> str:
        if pid == self.server.pid:
            return self.contender.top
        if pid == self.serving_pid:
            return self.contender.serving
        return "template" if pid == self.template_pid else "other"

    def tree(self) -> dict[int, Proc]:
        """Every process of the tree now, by pid."""
        root = procfs.stat(self.server.pid)
        if root is None:
            return {}
        pids = [root.pid, *(one.pid for one in procfs.descendants(root))]
        found = {pid: read_proc(pid, self.role(pid)) for pid in pids}
        return {pid: proc for pid, proc in found.items() if proc is not None}


@dataclass
class Sample:
    """One contender in one round: the tree at the window's start, and what the window cost."""

    key: str
    procs: list[Proc]
    pss_end_kb: int
    cpu_percent: float  # of one core, over the window
    cpu_by_role: dict[str, float]
    window_s: float
    load_average: float
    note: str = ""

    def pss(self, role: str | None = None) -> int:
        return sum(p.pss for p in self.procs if role is None or p.role == role)


class Apps:
    """The apps' directories for one round: the Flask app and the Django site (migrated)."""

    def __init__(self) -> None:
        self.flask = make_app_dir(0.0)
        # before any server starts: a new module in its directory is a save to our watchers
        self.no_watchdog = block_watchdog(self.flask)
        self.site = tempfile.mkdtemp(prefix="grace-memory-site-")
        shutil.copytree(os.path.join(HERE, "apps", "djsite"), self.site, dirs_exist_ok=True)
        for settings in SITE_SETTINGS.values():
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "-v0"],
                cwd=self.site,
                env=bench_env({"DJANGO_SETTINGS_MODULE": settings}),
                check=True,
                timeout=180,
            )

    def start(self, c: Contender) -> Running:
        port = free_port()
        directory = self.flask if c.app == "flask" else self.site
        env = bench_env({"BENCH_GRACE": "1"})
        if c.app != "flask":
            env["DJANGO_SETTINGS_MODULE"] = SITE_SETTINGS[c.app]
        if c.stat_reloader:
            env["PYTHONPATH"] = os.pathsep.join([self.no_watchdog, env["PYTHONPATH"]])
        log = os.path.join(directory, f"{c.key}.log")
        if c.again:  # the same command line, in the same directory, run once until warm
            first = Server(c.argv(port, directory), directory, env, f"{log}.first")
            try:
                if not servers.wait_in_log(first, servers.TEMPLATE_READY, 120.0):
                    raise RuntimeError(f"{c.label}: the first run's template was never ready")
            finally:
                first.stop()
        return Running(c, Server(c.argv(port, directory), directory, env, log), port)

    def remove(self) -> None:
        shutil.rmtree(self.flask, ignore_errors=True)
        shutil.rmtree(self.site, ignore_errors=True)


def get_ready(run: Running, warmup: int) -> None:
    """Wait until it answers (and, for ours, its template is ready), upgrade it if asked, then
    warm it up. Raises RuntimeError when the server fails."""
    run.serving_pid, _ = run.server.wait_answering(run.port, timeout=120.0)
    template = run.contender.grace and run.contender.top == "supervisor"
    if template and not servers.wait_in_log(run.server, servers.TEMPLATE_READY, 120.0):
        run.note = "no warm-start template"
    for _ in range(run.contender.upgrades):
        upgrade(run)
    if template:
        found = re.findall(servers.TEMPLATE_READY, run.server.output(10**7))
        run.template_pid = int(found[-1]) if found else 0
    for path in WARMUP[run.contender.app]:
        for _ in range(warmup):
            with contextlib.suppress(OSError):
                http_get(run.port, path, timeout=10.0)
    run.server.owned.scan()


def upgrade(run: Running, timeout: float = 60.0) -> None:
    """HUP the server; return once a new process answers and the old one has left."""
    processes = len(run.tree())
    old = run.serving_pid
    run.server.signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while run.serving_pid == old or len(run.tree()) > processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run.contender.label}: no new process within {timeout:g} s of HUP")
        with contextlib.suppress(OSError, ValueError):
            run.serving_pid = http_get(run.port, timeout=5.0).pid
        time.sleep(0.1)


def measure(runs: list[Running], seconds: float) -> list[Sample]:
    """Read every tree, wait *seconds*, read them again: the idle samples."""
    load = os.getloadavg()[0]
    began = time.monotonic()
    before = [run.tree() for run in runs]
    time.sleep(seconds)
    after = [run.tree() for run in runs]
    window = time.monotonic() - began
    samples = []
    for run, start, end in zip(runs, before, after, strict=True):
        spent: dict[str, int] = {}
        for pid, p in end.items():
            spent[p.role] = (
                spent.get(p.role, 0) + p.ticks - (start[pid].ticks if pid in start else 0)
            )
        percent = {role: round(100.0 * t / CLOCK_TICKS / window, 3) for role, t in spent.items()}
        note = run.note
        if set(start) != set(end):
            gone, new = sorted(set(start) - set(end)), sorted(set(end) - set(start))
            note = f"{note} processes gone {gone}, new {new}".strip()
        samples.append(
            Sample(
                key=run.contender.key,
                procs=sorted(start.values(), key=lambda p: p.pid),
                pss_end_kb=sum(p.pss for p in end.values()),
                cpu_percent=round(sum(percent.values()), 3),
                cpu_by_role=percent,
                window_s=round(window, 1),
                load_average=load,
                note=note,
            )
        )
    return samples


def run_phase(apps: Apps, chosen: list[Contender], plan: Plan, seconds: float) -> list[Sample]:
    """Start *chosen* side by side, get them ready, measure, stop them."""
    runs: list[Running] = []
    try:
        for c in chosen:
            runs.append(apps.start(c))
        for run in runs:
            get_ready(run, plan.warmup)
        time.sleep(plan.settle)
        return measure(runs, seconds)
    finally:
        for run in runs:
            run.server.stop()


@dataclass
class Plan:
    rounds: int = 3
    seconds: float = 60.0
    settle: float = 5.0
    warmup: int = 50
    alone_seconds: float = 10.0
    keys: list[str] = field(default_factory=lambda: [c.key for c in CONTENDERS])


def run(plan: Plan, verbose: bool = True) -> list[list[Sample]]:
    """Every round's samples; a server that fails skips the round's phase, with a message."""
    chosen = [BY_KEY[k] for k in plan.keys]
    rounds: list[list[Sample]] = []
    for number in range(plan.rounds):
        apps = Apps()
        samples: list[Sample] = []
        try:
            together = [c for c in chosen if not c.alone]
            alone = [c for c in chosen if c.alone]
            for group, seconds in ((together, plan.seconds), (alone, plan.alone_seconds)):
                if group:
                    try:
                        samples += run_phase(apps, group, plan, min(seconds, plan.seconds))
                    except RuntimeError as exc:
                        print(f"  round {number + 1}: {str(exc).splitlines()[0]}", flush=True)
        finally:
            apps.remove()
        rounds.append(samples)
        if verbose:
            for s in samples:
                print(f"  round {number + 1}: {memory_tables.describe(s)}", flush=True)
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window, s (60)")
    parser.add_argument("--settle", type=float, default=5.0, help="after the warm-up, s (5)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BY_KEY)}")
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.settle < 0:
        parser.error("--rounds must be at least 1, --seconds above 0, --settle 0 or more")
    plan = Plan(rounds=args.rounds, seconds=args.seconds, settle=args.settle)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(BY_KEY))
        if unknown:
            parser.error(f"unknown servers {unknown}: use some of {', '.join(BY_KEY)}")
        plan.keys = args.only.split(",")
    rounds = run(plan)
    print("\n".join(["", *memory_tables.tables(rounds)]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([[asdict(s) for s in r] for r in rounds], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
