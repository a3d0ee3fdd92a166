"""``docs/benchmarks.md``: the machine, the versions, the three measurements, how to redo them."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from importlib import metadata

import gunicorn_preload
import gunicorn_saves
import memory
import memory_tables
import saves_tables
import throughput
import upgrades
import warm
import wrk_hups
from common import RunPlan
from saves import Plan as SavePlan

DISTRIBUTIONS = ("grace_plugins", "flask", "werkzeug", "django", "gunicorn", "matplotlib")


def _proc_field(path: str, name: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def machine_facts(wrk_version: str, load: tuple[float, float]) -> list[str]:
    """One line each: cores and CPU, memory and OS, load averages, Python, packages, tools."""
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "CPU unknown"
    kib = _proc_field("/proc/meminfo", "MemTotal").split()[:1]
    memory = f"{int(kib[0]) / 1024**2:.1f} GiB memory" if kib else "memory unknown"
    versions = []
    for dist in DISTRIBUTIONS:
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return [
        f"{os.cpu_count()} cores ({cpu}), {memory}",
        f"{platform.system()} {platform.release()} ({platform.machine()}); load average"
        f" {load[0]:.1f} at the start, {load[1]:.1f} at the end (the machine was shared)",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        ", ".join(versions),
        wrk_version or "wrk not used (--no-wrk)",
    ]


@dataclass
class Run:
    """Everything one ``bench/run.py`` measured, and how."""

    command: str
    seconds: float
    facts: list[str]
    tput_plan: throughput.Plan
    tput: list[throughput.GroupResult]
    hup_plan: wrk_hups.Plan
    hups: list[wrk_hups.HupResult]
    plan: RunPlan
    rows: list[upgrades.Result]
    picture: str | None
    #: bench/warm.py's results (cold start vs warm and cold upgrades, memory), one per app.
    warm: list[dict] = dataclasses.field(default_factory=list)
    warm_rounds: int = 0
    #: The measurements run (bench/run.py's names); the page keeps the others' sections.
    sections: set[str] = dataclasses.field(default_factory=set)
    saves: list[saves_tables.Result] = dataclasses.field(default_factory=list)
    save_plan: SavePlan = dataclasses.field(default_factory=SavePlan)
    #: bench/gunicorn_saves.py's rows, and how many saves each
    gunicorn_saves: list[gunicorn_saves.Result] = dataclasses.field(default_factory=list)
    gunicorn_save_count: int = 0
    idle: list[list[memory.Sample]] = dataclasses.field(default_factory=list)
    idle_plan: memory.Plan = dataclasses.field(default_factory=memory.Plan)
    #: bench/gunicorn_preload.py's rounds, and how many HUPs each server had per round
    preload: list[dict] = dataclasses.field(default_factory=list)
    preload_hups: int = 0


def _throughput_section(run: Run) -> list[str]:
    p = run.tput_plan
    return [
        "## Throughput and latency (wrk)",
        "",
        "Each adapter against the server it replaces, same app (imported in ~0 s, no"
        " reloader), loaded by [wrk](https://github.com/wg/wrk) (C, epoll) with one thread and"
        f" {p.connections} connections: *keep-alive* reuses them, *fresh* sends"
        " `Connection: close` so that every request opens a new connection. The servers of a"
        f" group run side by side; each of {p.rounds} rounds loads each server for"
        f" {p.seconds} s in turn, in alternating order (A B, then B A), after a {p.warmup} s"
        " warm-up. A ratio is taken within a round (a busy neighbour hurts both sides of it"
        " alike) and given as **min / median / max over the rounds**; above 1 means more"
        " requests per second, or a longer latency, for grace_plugins.",
        "",
        *throughput.tables(run.tput),
        "",
        "* *errors*: wrk's socket errors (connect, read, write, timeout) and HTTP errors,"
        " summed over the rounds. Against Django's development server (`runserver` and"
        " `runhot` alike) the *fresh* rows count about one read error per request: the server"
        " closes the connection as asked without saying `Connection: close` in its answer, so"
        " wrk writes its next request into a closed connection, counts a read error and"
        " reconnects; no answered request is lost.",
        "* *busiest worker's CPU share* (gunicorn, 2 workers): of the CPU time the workers"
        " spent during a run, the busiest one's (`/proc/PID/stat`). wrk opens its"
        f" {p.connections} connections at once and each stays with the worker that accepted"
        " it: in some runs one worker accepts them all (a share near 1.00) and serves about"
        " half the requests per second of a run that spread them, whatever the worker class."
        " So a keep-alive ratio mixes two modes; the *same landing* rows keep only the rounds"
        f" in which both sides landed alike (one worker above {throughput.ONE_WORKER:.0%} on"
        " both, or on neither).",
        "* Django's server answers keep-alive requests in ~40 ms (it writes headers and body in"
        " two packets: Nagle's algorithm meets the client's delayed ACK), `runserver` and"
        " `runhot` alike; gunicorn's `sync` worker closes every connection (no keep-alive).",
        "",
    ]


def _hups_section(run: Run) -> list[str]:
    p = run.hup_plan
    clients = " and ".join(f"{n} {m}" for m, n, _ in wrk_hups.CLIENTS)
    return [
        "## Across HUPs, seen by wrk",
        "",
        "A second, independent client: wrk knows nothing of pids or versions and counts what"
        f" it sees while the server takes {p.hups} `kill -HUP` upgrades, {p.interval:g} s apart,"
        f" of an app that takes {wrk_hups.IMPORT_SECONDS:g} s to import. Two wrk processes run"
        f" at once, with {clients} connections. *versions answering*: code versions found in"
        " the answers (its Lua script reads the bodies), i.e. every upgrade took effect.",
        "",
        *wrk_hups.table(run.hups),
        "",
        "The *max* latency of gunicorn's own workers is the stall of a HUP: the old workers stop"
        " accepting, the connections wait in the listen queue while the new workers import the"
        " app. Django's *fresh* read errors are the artefact explained above (about one per"
        " request, with or without upgrades); a failure would show as read errors above the"
        " number of requests.",
        "",
    ]


def _upgrades_section(run: Run) -> list[str]:
    plan = run.plan
    return [
        "## Upgrades under load (our client)",
        "",
        f"Each row starts the server on 127.0.0.1, loads it with {plan.fresh} client threads"
        f" opening a fresh connection per request, {plan.keepalive} reusing a keep-alive"
        f" connection without ever retrying, and {plan.slow} sending slow requests"
        f" (`?sleep={plan.slow_seconds:g}`, in flight across the upgrades); after"
        f" {plan.steady_seconds:g} s of steady load it performs {plan.upgrades} upgrade(s): new"
        " code is written (`benchcode.py`, a new `VERSION`) and the upgrade is triggered by the"
        " reloader seeing the file (*file save*) or by `kill -HUP` to the pid the server"
        f" printed (*HUP*); the next upgrade comes {plan.settle_seconds:g} s after the new"
        " code first answered. The app is served with the import times of *app import* (the"
        " delay, and in brackets the bare import time of the app in a fresh interpreter,"
        " framework included). This client attributes every answer to a pid and a code"
        " version; it is written in Python and shares the cores with the server, so its"
        " throughput column is indicative only (the wrk tables above are the measure).",
        "",
        "* **requests**: all requests sent; **refused / reset / timeout / 5xx / truncated**:"
        " failed requests by kind, as the client saw them (a keep-alive client never retries,"
        " so a connection closed under it counts);",
        "* **slow completed**: slow requests answered / sent;",
        "* **cutover ÷ import**: median time from the trigger to the first answer from the new"
        " code, divided by the bare import time (a file-save row includes the reloader's"
        " polling delay);",
        "* **longest stall ÷ import**: the longest time, in any upgrade window, during which"
        " no request completed, divided by the bare import time;",
        "* **p99 upgrade ÷ steady**: p99 latency of the quick requests that started in an"
        " upgrade window (trigger to 1 s after the cutover) divided by their p99 before the"
        " first upgrade;",
        "* **throughput ÷ peer**: successful requests per second of the grace_plugins row"
        " divided by the same figure for the server it replaces (same app, same load).",
        "",
        "Notes: a client whose request failed waits 50 ms before its next one, so *refused*"
        " counts how long the port was closed rather than how fast a client can retry; the"
        " Flask rows use werkzeug's `stat` reloader (1 s polls, as Django's runserver without"
        " pywatchman; `--watchdog` lets werkzeug choose), ignore `*/grace_plugins/*` and watch"
        " `benchcode.py` (`--extra-files`); gunicorn runs 2 workers (`--threads 4` for gthread"
        " and grace_plugins.Worker), `--graceful-timeout 10 --keep-alive 5`; the grace_plugins"
        " servers `--drain-timeout 10`, and `hotrun` and `runhot` are loaded once their"
        " warm-start template is ready (an upgrade before it starts cold: on a loaded machine"
        " the template takes seconds).",
        "",
        *upgrades.table(run.rows),
        "",
    ]


def _picture_section(run: Run) -> list[str]:
    if not run.picture:
        return []
    return [
        "## The picture",
        "",
        f"![requests during upgrades]({os.path.basename(run.picture)})",
        "",
        "Drawn with matplotlib from the two 1 s import HUP rows above. Every dot is one request"
        " (x: when it started; y: how long it took, log scale), coloured by the process (pid"
        " and code version) that answered it; red crosses are failed requests; dashed lines"
        " are the HUPs. Left: `flask hotrun`; right: gunicorn's plain HUP (`-k gthread`), same"
        " app. A blank band after a HUP is time in which no request started: every client was"
        " waiting, its connection queued on a socket nobody accepted on while the new code"
        " imported (the few dots high up at its left edge are those waits).",
        "",
    ]


def _warm_section(run: Run) -> list[str]:
    if not run.warm:
        return []
    return [
        "## Warm start: trigger to new code, against a cold start",
        "",
        f"`bench/warm.py`, {run.warm_rounds} rounds per app: the app's cold start (process"
        " start to first answer), our upgrade with warm start on and off (file save or HUP to"
        " the first answer from the new code), and the framework's own reloader (`flask run"
        " --reload` with the stat reloader, `runserver`) for the Flask example and a"
        " startproject-shaped Django site (`bench/apps/djsite`: admin, auth, sessions,"
        " messages, a models app). Times are medians; the last column is warm upgrade ÷ the"
        " median cold start, min / median / max over the rounds. Memory is PSS"
        " (`/proc/<pid>/smaps_rollup`) of the processes serving one app.",
        "",
        warm.table(run.warm),
        "",
    ]


def _saves_section(run: Run) -> list[str]:
    return saves_tables.section(run.saves, run.save_plan)


def _gunicorn_saves_section(run: Run) -> list[str]:
    count = run.gunicorn_save_count
    return gunicorn_saves.section(run.gunicorn_saves, count, gunicorn_saves.INTERVAL)


def _memory_section(run: Run) -> list[str]:
    return memory_tables.section(run.idle, run.idle_plan)


def _preload_section(run: Run) -> list[str]:
    return gunicorn_preload.section(run.preload, run.preload_hups)


#: Every section of the page, in order: the measurement that makes it, its heading, its maker.
SECTIONS = [
    ("throughput", "## Throughput and latency (wrk)", _throughput_section),
    ("hups", "## Across HUPs, seen by wrk", _hups_section),
    ("upgrades", "## Upgrades under load (our client)", _upgrades_section),
    ("warm", "## Warm start: trigger to new code, against a cold start", _warm_section),
    ("saves", "## Save → new code (bench/saves.py)", _saves_section),
    (
        "gunicorn-saves",
        "## gunicorn --reload: save → new code (bench/gunicorn_saves.py)",
        _gunicorn_saves_section,
    ),
    ("memory", "## Idle memory and CPU (bench/memory.py)", _memory_section),
    ("gunicorn-preload", gunicorn_preload.SECTION_HEADING, _preload_section),
    ("upgrades", "## The picture", _picture_section),
]
MADE_BY = "This page was made by "


def _kept(path: str) -> tuple[list[str], dict[str, list[str]]]:
    """The page at *path*: where its header says how it was made (to the end of the header),
    and each section by its heading."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return [], {}
    head, *parts = text.split("\n## ")
    sections = {}
    for part in parts:
        lines = ("## " + part).rstrip().split("\n")
        sections[lines[0]] = [*lines, ""]
    head_lines = head.rstrip().split("\n")
    made = [i for i, line in enumerate(head_lines) if line.startswith(MADE_BY)]
    return (head_lines[made[0] :] + [""] if made else []), sections


def write(path: str, run: Run) -> None:
    """Write the document to *path*. A run of some measurements only (``--sections``) keeps
    the other sections, and the account of the run that made them, from the page there."""
    intro = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; do not edit by hand. Regenerate everything, this page"
        " and the picture, with one command from the repository root (needs wrk, and the"
        " `bench` extra: `pip install -e '.[bench]'`):",
        "",
        "```sh",
        "python bench/run.py            # full run (~40 min on 2 cores); --quick: ~12 min",
        "python bench/run.py --sections saves,memory   # these only; the page keeps the rest",
        "python bench/picture.py        # only the picture, docs/upgrade.svg (~1 min)",
        "```",
        "",
    ]
    made_by = [
        f"{MADE_BY}`{run.command}` in {run.seconds:.0f} s on:",
        "",
        *[f"* {fact}" for fact in run.facts],
        "",
        "Ratios, not absolute numbers: the machine is small and was shared while this ran.",
        "",
    ]
    kept_made_by, kept = _kept(path)
    partial = not {name for name, _, _ in SECTIONS} <= run.sections
    lines = intro + (kept_made_by if partial and kept_made_by else made_by)
    for name, heading, make in SECTIONS:
        made = make(run) if name in run.sections else []
        if partial and made:
            made[1:1] = ["", f"Made by `{run.command}`: {'; '.join(run.facts[1:2])}."]
        lines += made or kept.get(heading, [])
    with open(path, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")
