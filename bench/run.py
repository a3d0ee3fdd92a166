"""Benchmarks of grace_plugins against the servers it replaces; regenerates docs/benchmarks.md.

Run it from the repository root, with the ``bench`` extra installed and wrk on the PATH::

    python bench/run.py            # full run, ~40 min on 2 cores: docs/benchmarks.md, upgrade.svg
    python bench/run.py --quick    # smoke run, ~12 min
    python bench/run.py --only gunicorn --out gunicorn-only.md
    python bench/run.py --sections saves,memory   # these two; the page keeps the others

The measurements, each bounded in time (see the modules):

1. ``throughput.py``: throughput and p50/p99/max latency by wrk, keep-alive and fresh
   connections, each adapter against the server it replaces, in ABAB rounds;
2. ``wrk_hups.py``: wrk's socket errors and non-2xx answers across repeated HUPs;
3. ``upgrades.py``: our own client across upgrades (failures by kind, slow requests, cutover,
   stalls), whose flask hotrun and gunicorn gthread rows ``picture.py`` draws;
4. ``warm.py``: trigger to new code with warm start on and off against the app's cold start
   and the framework's own reloader, and the memory (RSS, PSS) of each arrangement;
5. ``saves.py``: save → first answer from the new code, N saves under load, where the time
   goes, and HUP → new generation of the same server;
6. ``gunicorn_saves.py``: ``gunicorn --reload`` with our worker (a save is a HUP) against the
   same server's HUP and gthread's own reloader: new code, stalls, a broken save;
7. ``memory.py``: idle memory (PSS) and CPU of each server's whole process tree, ours against
   the server it replaces, side by side;
8. ``gunicorn_preload.py``: ``gunicorn --preload`` with our worker (molds) against gunicorn's
   own ``--preload``: memory of the tree, HUP → new code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict

import gunicorn_preload
import gunicorn_saves
import memory
import memory_tables
import picture
import report
import saves
import saves_tables
import throughput
import upgrades
import warm
import wrk
import wrk_hups
from common import ROOT, RunPlan

SECTIONS = (
    "throughput",
    "hups",
    "upgrades",
    "warm",
    "saves",
    "gunicorn-saves",
    "memory",
    "gunicorn-preload",
)


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


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short, one of each")
    parser.add_argument("--upgrades", type=int, help="upgrades per row (default 2, quick 1)")
    parser.add_argument("--rounds", type=int, help="wrk ABAB rounds (default 3, quick 1)")
    parser.add_argument("--hups", type=int, help="HUPs under wrk (default 3, quick 1)")
    parser.add_argument("--only", help="run servers whose label or group contains this text")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--json", help="also write every timeline to this JSON file")
    parser.add_argument("--no-picture", action="store_true", help="do not draw upgrade.svg")
    parser.add_argument("--no-wrk", action="store_true", help="skip the two wrk measurements")
    parser.add_argument(
        "--watchdog", action="store_true", help="let werkzeug's reloader use watchdog (inotify)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"measurements to run, of {', '.join(SECTIONS)} (default all); the page keeps"
        " the sections of the others as they were",
    )
    parser.add_argument("--saves", type=int, help="saves per server (default 20, quick 3)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 60, quick 10)")
    parser.add_argument("--idle-rounds", type=int, help="idle memory rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}: use some of {', '.join(SECTIONS)}")
    return args


def chosen(label: str, group: str, only: str | None) -> bool:
    return not only or only in label or only == group


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sections = set(args.sections.split(","))
    # A SIGTERM (timeout, CI) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    uses_wrk = not args.no_wrk and bool(sections & {"throughput", "hups"})
    wrk_path = wrk.find() if uses_wrk else None
    if uses_wrk and wrk_path is None:
        print(f"{wrk.HINT} (or run with --no-wrk)", file=sys.stderr)
        return 2
    if "upgrades" not in sections:
        args.no_picture = True
    if not args.no_picture:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"{picture.MISSING} (or run with --no-picture)", file=sys.stderr)
            return 2
    quick = args.quick
    tput_plan = throughput.Plan(rounds=1, seconds=1, warmup=0) if quick else throughput.Plan()
    hup_plan = wrk_hups.Plan(1, interval=2.0, lead=0.5, tail=1.0) if quick else wrk_hups.Plan()
    plan = RunPlan(upgrades=1 if quick else 2)
    if quick:
        plan.steady_seconds, plan.settle_seconds = 1.0, 1.0
    tput_plan.rounds = max(1, args.rounds or tput_plan.rounds)
    hup_plan.hups = max(1, args.hups or hup_plan.hups)
    plan.upgrades = max(1, args.upgrades or plan.upgrades)
    load_start = os.getloadavg()[0]
    started = time.monotonic()

    tput, hups = [], []
    if wrk_path and "throughput" in sections:
        _heading(started, "throughput and latency (wrk, ABAB rounds):")
        for group, members in throughput.GROUPS:
            members = [c for c in members if chosen(c.label, group, args.only)]
            if members:
                tput.append(throughput.run_group(group, members, wrk_path, tput_plan))
    if wrk_path and "hups" in sections:
        _heading(started, "wrk across HUPs:")
        for c in wrk_hups.contenders():
            if chosen(c.label, "", args.only) and (c.grace or not quick):
                hups.append(wrk_hups.run_one(c, wrk_path, hup_plan))
    rows = []
    if "upgrades" in sections:
        _heading(started, "upgrades under load (our client):")
        for delay in (1.0,) if quick else upgrades.IMPORT_DELAYS:
            for row in upgrades.ROWS:
                if chosen(row.label, row.group, args.only) and (not quick or picture.drawn(row)):
                    rows.append(upgrades.run_row(row, delay, plan, watchdog=args.watchdog))

    warm_results: list[dict] = []
    warm_rounds = 2 if quick else 5
    if "warm" in sections:
        _heading(started, "warm start against cold (bench/warm.py):")
        with tempfile.TemporaryDirectory(prefix="bench-warm-") as workdir:
            for kind in ("flask", "django"):
                if chosen(kind, kind, args.only):
                    warm_results.append(warm.run(kind, warm_rounds, workdir))

    save_plan = saves.Plan(saves=max(1, args.saves or (3 if quick else 20)))
    save_results = []
    if "saves" in sections:
        _heading(started, f"save → new code, {save_plan.saves} saves (bench/saves.py):")
        for save_row in saves.ROWS:
            if chosen(save_row.label, save_row.key, args.only):
                save_results.append(saves.run_row(save_row, save_plan))

    gunicorn_count = 2 if quick else 10
    gunicorn_results = []
    if "gunicorn-saves" in sections:
        _heading(started, f"gunicorn --reload, {gunicorn_count} saves (bench/gunicorn_saves.py):")
        for gunicorn_row in gunicorn_saves.ROWS:
            if chosen(gunicorn_row.label, gunicorn_row.key, args.only):
                result = gunicorn_saves.run_row(
                    gunicorn_row, gunicorn_count, gunicorn_saves.INTERVAL
                )
                gunicorn_results.append(result)

    idle_plan = memory.Plan(
        rounds=max(1, args.idle_rounds or (1 if quick else 3)),
        seconds=args.idle_seconds or (10.0 if quick else 60.0),
    )
    idle_plan.keys = [c.key for c in memory.CONTENDERS if chosen(c.label, c.key, args.only)]
    idle_rounds = []
    if "memory" in sections and idle_plan.keys:
        _heading(started, "idle memory and CPU (bench/memory.py):")
        idle_rounds = memory.run(idle_plan)

    preload_rounds, preload_hups = (1, 2) if quick else (3, 5)
    preload = []
    if "gunicorn-preload" in sections and chosen("gunicorn --preload", "gunicorn", args.only):
        _heading(
            started, f"gunicorn --preload, {preload_rounds} rounds (bench/gunicorn_preload.py):"
        )
        preload = gunicorn_preload.run(preload_rounds, preload_hups)

    drawn = None
    if not args.no_picture:
        drawn = os.path.join(os.path.dirname(args.out), "upgrade.svg")
        if picture.render_from_results(rows, drawn):
            print(f"wrote {drawn}")
        else:
            drawn = None
    run = report.Run(
        command=" ".join(["python bench/run.py", *public_args(argv or sys.argv[1:])]),
        seconds=time.monotonic() - started,
        facts=report.machine_facts(
            wrk.version(wrk_path) if wrk_path else "", (load_start, os.getloadavg()[0])
        ),
        tput_plan=tput_plan,
        tput=tput,
        hup_plan=hup_plan,
        hups=hups,
        plan=plan,
        rows=rows,
        picture=drawn,
        warm=warm_results,
        warm_rounds=warm_rounds,
        sections=sections,
        saves=save_results,
        save_plan=save_plan,
        gunicorn_saves=gunicorn_results,
        gunicorn_save_count=gunicorn_count,
        idle=idle_rounds,
        idle_plan=idle_plan,
        preload=preload,
        preload_hups=preload_hups,
    )
    report.write(args.out, run)
    print(f"wrote {args.out} ({run.seconds:.0f} s)")
    if tput:
        print("\n".join(throughput.tables(tput)))
    if rows:
        print("\n".join(upgrades.table(rows)))
    if warm_results:
        print(warm.table(warm_results))
    if save_results:
        print("\n".join(saves_tables.tables(save_results)))
    if gunicorn_results:
        print("\n".join(gunicorn_saves.table(gunicorn_results)))
    if idle_rounds:
        print("\n".join(memory_tables.tables(idle_rounds)))
    if preload:
        print(gunicorn_preload.table(preload, preload_hups))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([_row_json(r) for r in rows], handle)
    return 0


def _heading(started: float, text: str) -> None:
    """A measurement begins: when, into the run, and the machine's load (what it shares)."""
    elapsed, load = time.monotonic() - started, os.getloadavg()[0]
    print(f"[{elapsed:.0f} s into the run, load average {load:.1f}] {text}", flush=True)


def _row_json(r: upgrades.Result) -> dict[str, object]:
    return {
        "label": r.row.label,
        "trigger": r.row.trigger,
        "delay": r.delay,
        "skipped": r.skipped,
        "import_s": r.import_s,
        "numbers": asdict(r.numbers) if r.numbers else None,
        "timeline": r.timeline.as_dict() if r.timeline else None,
        "log_tail": r.log_tail,
    }


if __name__ == "__main__":
    sys.exit(main())
