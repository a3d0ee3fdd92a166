"""Throughput and latency of each adapter against the server it replaces, measured by wrk.

The servers of a group run side by side (same app, imported in ~0 s, no reloader); each round
loads each server in turn with wrk, in alternating order (A B C, then C B A: ABAB rounds), once
with keep-alive connections and once with a fresh connection per request. A ratio is taken
within one round, so a neighbour who loads the machine for a while hurts both sides alike; the
table gives the ratios' min / median / max over the rounds.
"""

from __future__ import annotations

import os
import shutil
import statistics
from dataclasses import dataclass, field

import servers
import wrk
from common import Server, bench_env, free_port, make_app_dir
from procmem import read_proc

from tests.harness.procfs import descendants, stat  # on sys.path by common

MODES = (("keep-alive", False), ("fresh", True))  # (name, send Connection: close)
#: A busiest worker's CPU share above this: one worker served every connection of the run.
ONE_WORKER = 0.9


@dataclass
class Contender:
    label: str
    argv: servers.Argv
    grace: bool = False
    check: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # processes that share the connections (gunicorn's -w)


GROUPS: list[tuple[str, list[Contender]]] = [
    (
        "gunicorn",
        [
            Contender(
                "`gunicorn -k grace_plugins.Worker -w 2 --threads 4`",
                servers.gunicorn("-k", "grace_plugins.Worker", "--threads", "4"),
                True,
                servers.GUNICORN_CHECK,
                workers=2,
            ),
            Contender(
                "`gunicorn -k gthread -w 2 --threads 4`",
                servers.gunicorn("-k", "gthread", "--threads", "4"),
                workers=2,
            ),
            Contender("`gunicorn -k sync -w 2`", servers.gunicorn("-k", "sync"), workers=2),
        ],
    ),
    (
        "flask",
        [
            Contender(
                "`flask hotrun`",
                servers.flask("hotrun", "--no-reload", "--drain-timeout", "10"),
                True,
                servers.FLASK_CHECK,
            ),
            Contender("`flask run`", servers.flask("run", "--no-reload")),
        ],
    ),
    (
        "django",
        [
            Contender(
                "`manage.py runhot`",
                servers.django("runhot", "--noreload", "--drain-timeout", "10"),
                True,
                servers.DJANGO_CHECK,
                {"BENCH_GRACE": "1"},
            ),
            Contender("`manage.py runserver`", servers.django("runserver", "--noreload")),
        ],
    ),
]


@dataclass
class Plan:
    rounds: int = 3
    seconds: int = 2  # per wrk run
    connections: int = 8
    warmup: int = 1  # seconds of wrk per server before the rounds, not counted


@dataclass
class GroupResult:
    group: str
    contenders: list[Contender]
    runs: dict[tuple[str, str], list[wrk.WrkResult]] = field(default_factory=dict)
    #: per run of a server with several workers: the busiest worker's share of their CPU time
    shares: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def ratios(self) -> list[tuple[str, str, str, list[float], list[float], list[float]]]:
        """(adapter, peer, mode, rps ratios, p50 ratios, p99 ratios), one value per round."""
        out = []
        for ours in (c for c in self.contenders if c.grace):
            for peer in (c for c in self.contenders if not c.grace):
                for mode, _ in MODES:
                    a, b = self.runs.get((ours.label, mode)), self.runs.get((peer.label, mode))
                    if not a or not b:
                        continue
                    pairs = list(zip(a, b, strict=False))
                    out.append((ours.label, peer.label, mode, *_ratios(pairs)))
                    landed = self._landed_alike(ours.label, peer.label, mode)
                    if landed is not None and len(landed) < len(pairs):
                        alike = [pairs[i] for i in landed if i < len(pairs)]
                        name = f"{mode}, same landing ({len(alike)} of {len(pairs)} rounds)"
                        out.append((ours.label, peer.label, name, *_ratios(alike)))
        return out

    def _landed_alike(self, ours: str, peer: str, mode: str) -> list[int] | None:
        """The rounds in which both servers' connections landed alike (one worker held them
        all on both sides, or on neither: :data:`ONE_WORKER`); None if not measured."""
        a, b = self.shares.get((ours, mode)), self.shares.get((peer, mode))
        if not a or not b:
            return None
        pairs = zip(a, b, strict=False)
        return [i for i, (x, y) in enumerate(pairs) if (x > ONE_WORKER) == (y > ONE_WORKER)]


def _ratios(pairs: list[tuple[wrk.WrkResult, wrk.WrkResult]]) -> tuple[list[float], ...]:
    """Throughput, p50 and p99 ratios of each (ours, peer) pair."""
    return (
        [x.rps / y.rps for x, y in pairs if y.rps],
        [x.p50 / y.p50 for x, y in pairs if y.p50],
        [x.p99 / y.p99 for x, y in pairs if y.p99],
    )


def run_group(
    group: str, contenders: list[Contender], wrk_path: str, plan: Plan, verbose: bool = True
) -> GroupResult:
    """Start every server of *group*, run the rounds, stop them. Blocks; bounded."""
    result = GroupResult(group, contenders)
    started: list[tuple[Contender, Server, int, str]] = []
    try:
        for c in contenders:
            app_dir = make_app_dir(0.0)
            env = bench_env(c.env)
            reason = servers.unavailable(c.check, app_dir, env)
            if reason:
                result.skipped[c.label] = reason
                shutil.rmtree(app_dir, ignore_errors=True)
                continue
            port = free_port()
            log = os.path.join(app_dir, "server.log")
            started.append((c, Server(c.argv(port, app_dir), app_dir, env, log), port, app_dir))
        live = []
        for c, server, port, _ in started:
            try:
                server.wait_answering(port, timeout=60.0)
                if plan.warmup:
                    wrk.run(wrk_path, port, plan.warmup, plan.connections)
                live.append((c, port, server.pid))
            except (RuntimeError, wrk.WrkError) as exc:
                result.skipped[c.label] = f"server failed: {str(exc).splitlines()[0]}"
        for number in range(plan.rounds):
            order = live if number % 2 == 0 else live[::-1]
            for mode, close in MODES:
                for c, port, pid in order:
                    before = worker_ticks(pid) if c.workers > 1 else {}
                    try:
                        res = wrk.run(wrk_path, port, plan.seconds, plan.connections, close)
                    except wrk.WrkError as exc:
                        result.skipped[c.label] = str(exc)
                        continue
                    result.runs.setdefault((c.label, mode), []).append(res)
                    share = busiest_share(before, worker_ticks(pid)) if c.workers > 1 else None
                    if share is not None:
                        result.shares.setdefault((c.label, mode), []).append(share)
                    if verbose:
                        busiest = f", busiest worker {share:.0%} of the CPU" if share else ""
                        print(
                            f"  round {number + 1} {mode:10s} {c.label}: {describe(res)}{busiest}"
                        )
    finally:
        for _, server, _, app_dir in started:
            server.stop()
            shutil.rmtree(app_dir, ignore_errors=True)
    return result


def worker_ticks(pid: int) -> dict[int, int]:
    """CPU time (clock ticks) of each live child of server *pid*: its workers."""
    root = stat(pid)
    found = (read_proc(one.pid) for one in (descendants(root) if root is not None else []))
    return {proc.pid: proc.ticks for proc in found if proc is not None}


def busiest_share(before: dict[int, int], after: dict[int, int]) -> float | None:
    """The busiest worker's share of the CPU time the workers spent between two readings, or
    None (no time counted). With 2 workers and keep-alive connections, the kernel hands each
    connection to whichever worker accepts first: near 1.0, one worker served them all."""
    spent = [after[pid] - before.get(pid, 0) for pid in after]
    total = sum(spent)
    return max(spent) / total if total > 0 else None


def describe(res: wrk.WrkResult) -> str:
    return (
        f"{res.rps:.0f} req/s, p50 {ms(res.p50)} p99 {ms(res.p99)} max {ms(res.max)},"
        f" errors {res.socket_errors + res.status}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def spread(values: list[float], digits: int = 2) -> str:
    """``min / median / max`` of *values*."""
    if not values:
        return "–"
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def tables(results: list[GroupResult]) -> list[str]:
    """The Markdown tables: ratios first, then each server's own numbers."""
    lines = [
        "| adapter ÷ server it replaces | connections | throughput ratio"
        " | p50 latency ratio | p99 latency ratio |",
        "|---|---|---|---|---|",
    ]
    for group in results:
        for ours, peer, mode, rps, p50, p99 in group.ratios():
            lines.append(
                f"| **{ours}** ÷ {peer} | {mode} | {spread(rps)} | {spread(p50)} | {spread(p99)} |"
            )
    lines += [
        "",
        "| server | connections | req/s min / median / max | p50 | p99 | max | errors"
        " | busiest worker's CPU share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in results:
        for c in group.contenders:
            name = f"**{c.label}**" if c.grace else c.label
            if c.label in group.skipped and not any(k[0] == c.label for k in group.runs):
                lines.append(f"| {name} | skipped: {group.skipped[c.label]} | | | | | | |")
                continue
            for mode, _ in MODES:
                runs = group.runs.get((c.label, mode), [])
                if not runs:
                    continue
                med = statistics.median
                errors = sum(r.socket_errors + r.status for r in runs)
                lines.append(
                    f"| {name} | {mode} | {spread([r.rps for r in runs], 0)}"
                    f" | {ms(med(r.p50 for r in runs))} | {ms(med(r.p99 for r in runs))}"
                    f" | {ms(max(r.max for r in runs))} | {errors}"
                    f" | {spread(group.shares.get((c.label, mode), []))} |"
                )
    return lines
