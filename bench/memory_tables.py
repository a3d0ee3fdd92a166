"""The tables of ``bench/memory.py``: ours against theirs, each process, the watcher's cost."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memory import Plan, Sample

#: (what is compared, ours, theirs, the one process compared or None for the whole tree)
COMPARE = [
    ("site with admin", "site-runhot", "site-runserver", None),
    ("site with admin, after one HUP", "site-runhot-up", "site-runserver", None),
    ("site with admin, started again", "site-runhot-again", "site-runserver", None),
    ("site with many apps", "many-runhot", "many-runserver", None),
    ("site with many apps, after one HUP", "many-runhot-up", "many-runserver", None),
    ("site with many apps, started again", "many-runhot-again", "many-runserver", None),
    ("Flask example", "hotrun", "flask-run-stat", None),
    ("Flask example, after one HUP", "hotrun-up", "flask-run-stat", None),
    ("Flask example, started again", "hotrun-again", "flask-run-stat", None),
    ("Flask example", "hotrun", "flask-run", None),
    ("gunicorn, one worker", "gunicorn-grace", "gunicorn-gthread", None),
    ("gunicorn, one worker, after one HUP", "gunicorn-grace-up", "gunicorn-gthread-up", None),
    ("gunicorn, the master alone", "gunicorn-grace", "gunicorn-gthread", "master"),
    (
        "gunicorn, the master alone, after one HUP",
        "gunicorn-grace-up",
        "gunicorn-gthread-up",
        "master",
    ),
]
#: (server, with its watcher, without)
WATCHER = [
    ("`runhot` (site with admin)", "site-runhot", "site-runhot-noreload"),
    ("`flask hotrun`", "hotrun", "hotrun-noreload"),
]
ROLES = ("supervisor", "master", "reloader", "generation", "server", "worker", "template", "other")
MB = 1024.0


def describe(s: Sample) -> str:
    parts = ", ".join(f"{p.role} {p.pss / MB:.1f}" for p in s.procs)
    cpu = ", ".join(f"{role} {v:.2f}" for role, v in s.cpu_by_role.items())
    note = f"; {s.note}" if s.note else ""
    return (
        f"{s.key}: PSS {s.pss() / MB:.1f} MB ({parts}), {s.pss_end_kb / MB:.1f} MB"
        f" {s.window_s:g} s later; CPU {s.cpu_percent:.2f} % of a core ({cpu}){note}"
    )


def spread(values: list[float], digits: int = 2) -> str:
    """min / median / max, or a dash when there is nothing to show."""
    if not values:
        return "–"
    return " / ".join(  # + 0.0: no "-0.0" for a change that rounds to nothing
        f"{round(v, digits) + 0.0:.{digits}f}"
        for v in (min(values), statistics.median(values), max(values))
    )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mb(kb: float | None) -> str:
    return "–" if kb is None else f"{kb / MB:.1f}"


def _pairs(
    rounds: list[list[Sample]], a: str, b: str, value: Callable[[Sample], float]
) -> tuple[list[float], list[float]]:
    """The values of *a* and *b* in the rounds that measured both, in the same order."""
    ours, theirs = [], []
    for samples in rounds:
        by_key = {s.key: s for s in samples}
        if a in by_key and b in by_key:
            ours.append(value(by_key[a]))
            theirs.append(value(by_key[b]))
    return ours, theirs


def _ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return [x / y for x, y in zip(ours, theirs, strict=True) if y > 0]


def _pss_of(role: str | None) -> Callable[[Sample], float]:
    return lambda s: s.pss(role)


def compare_table(rounds: list[list[Sample]], labels: dict[str, str]) -> list[str]:
    lines = [
        "| what | ours | theirs | PSS ours / theirs, MB | PSS ours ÷ theirs, min / median / max"
        " | idle CPU ours / theirs, % of a core | CPU ours ÷ theirs |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, a, b, role in COMPARE:
        ours, theirs = _pairs(rounds, a, b, _pss_of(role))
        if not ours:
            continue
        cpu_a, cpu_b = _pairs(rounds, a, b, lambda s: s.cpu_percent)
        cpu = f"{_median(cpu_a):.2f} / {_median(cpu_b):.2f}" if role is None else "–"
        cpu_ratio = spread(_ratios(cpu_a, cpu_b)) if role is None else "–"
        lines.append(
            f"| {what} | {labels[a]} | {labels[b]} | {_mb(_median(ours))} / {_mb(_median(theirs))}"
            f" | {spread(_ratios(ours, theirs))} | {cpu} | {cpu_ratio} |"
        )
    return lines


def process_table(
    rounds: list[list[Sample]], labels: dict[str, str], apps: dict[str, str]
) -> list[str]:
    keys = list(dict.fromkeys(s.key for samples in rounds for s in samples))
    lines = [
        "| server | app | each process's PSS, MB | tree PSS | tree USS | tree RSS"
        " | PSS change over the window | each process's idle CPU, % of a core |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        samples = [s for r in rounds for s in r if s.key == key]
        roles = [role for role in ROLES if any(p.role == role for s in samples for p in s.procs)]
        each = ", ".join(
            f"{role} {_mb(_median([float(s.pss(role)) for s in samples]))}" for role in roles
        )
        uss = _median([float(sum(p.uss for p in s.procs)) for s in samples])
        rss = _median([float(sum(p.rss for p in s.procs)) for s in samples])
        change = [(s.pss_end_kb - s.pss()) / MB for s in samples]
        cpu = ", ".join(
            f"{role} {_median([s.cpu_by_role.get(role, 0.0) for s in samples]):.2f}"
            for role in roles
        )
        pss = _median([float(s.pss()) for s in samples])
        lines.append(
            f"| {labels[key]} | {apps[key]} | {each} | {_mb(pss)}"
            f" | {_mb(uss)} | {_mb(rss)} | {spread(change, 1)} MB | {cpu} |"
        )
    return lines


def watcher_table(rounds: list[list[Sample]]) -> list[str]:
    lines = [
        "| server | supervisor PSS with / without, MB | supervisor: watcher's cost, MB"
        " | tree PSS with / without, MB | tree: watcher's cost, MB | idle CPU with / without, %"
        " of a core |",
        "|---|---|---|---|---|---|",
    ]
    for label, a, b in WATCHER:
        sup_a, sup_b = _pairs(rounds, a, b, lambda s: s.pss("supervisor"))
        if not sup_a:
            continue
        tree_a, tree_b = _pairs(rounds, a, b, lambda s: s.pss())
        cpu_a, cpu_b = _pairs(rounds, a, b, lambda s: s.cpu_percent)
        sup_cost = [(x - y) / MB for x, y in zip(sup_a, sup_b, strict=True)]
        tree_cost = [(x - y) / MB for x, y in zip(tree_a, tree_b, strict=True)]
        lines.append(
            f"| {label} | {_mb(_median(sup_a))} / {_mb(_median(sup_b))} | {spread(sup_cost, 1)}"
            f" | {_mb(_median(tree_a))} / {_mb(_median(tree_b))} | {spread(tree_cost, 1)}"
            f" | {_median(cpu_a):.2f} / {_median(cpu_b):.2f} |"
        )
    return lines


def load_line(rounds: list[list[Sample]]) -> str:
    loads = [s.load_average for r in rounds for s in r]
    windows = sorted({s.window_s for r in rounds for s in r})
    if not loads:
        return "Nothing was measured."
    return (
        f"{len(rounds)} round(s); idle windows of {', '.join(f'{w:g}' for w in windows)} s;"
        f" load average (1 min) at the windows' start {min(loads):.1f} to {max(loads):.1f}."
    )


def tables(rounds: list[list[Sample]]) -> list[str]:
    from memory import BY_KEY

    labels = {key: c.label for key, c in BY_KEY.items()}
    apps = {
        key: {"flask": "Flask", "site": "site", "many": "many apps"}[c.app]
        for key, c in BY_KEY.items()
    }
    notes = sorted({f"{labels[s.key]}: {s.note}" for r in rounds for s in r if s.note})
    return [
        load_line(rounds),
        "",
        *compare_table(rounds, labels),
        "",
        *process_table(rounds, labels, apps),
        "",
        *watcher_table(rounds),
        *([""] + [f"* {n}" for n in notes] if notes else []),
    ]


def section(rounds: list[list[Sample]], p: Plan) -> list[str]:
    """The section of ``docs/benchmarks.md``."""
    if not rounds:
        return []
    return [
        "## Idle memory and CPU (bench/memory.py)",
        "",
        "Every server started at once, side by side (so that a library page shared with the"
        " machine's other processes is split the same way for all), answered"
        f" {p.warmup} requests per path (`/hello`; the sites also `/admin/login/`, and the"
        f" many-apps site `/sitemap.xml` and `/feed/`), then left alone {p.settle:g} s; then"
        " `/proc` is read twice, an idle window apart: PSS, USS and RSS of every process of its"
        " tree (`smaps_rollup`), and the CPU each spent in the window (`stat`: utime + stime)."
        " Trees: ours, supervisor + generation + warm-start template; `runserver` and"
        " `flask run --reload`, reloader parent + serving child; gunicorn, master + one worker."
        " A first start of `runhot` (its command line never ran before) forks its first"
        " generation from a template of what `manage.py` had imported, which then grows by what"
        " that generation imported beyond it (`flask hotrun`'s first generation starts cold)."
        " *After one HUP*: the server got one `kill -HUP` before the warm-up (our generation is"
        " forked from the template, as after any save)."
        " *Started again*: the same command line was run once in the same directory until its"
        " template was ready, then stopped; started again, its first generation is forked from"
        " a template of the modules that run's template held."
        " *Site with admin*: `bench/apps/djsite`; *many apps*:"
        " the same site with every contrib app that installs without a system library"
        " (`djsite/settings_many.py`: admindocs, sites, flatpages, redirects, sitemaps,"
        " humanize, syndication and their middleware and URLs). `flask run --reload` with"
        " watchdog spins, so it is measured in a phase of its own, over"
        f" {min(p.alone_seconds, p.seconds):g} s. Ratios are taken within a round and given as"
        f" min / median / max over {p.rounds} round(s); MB are medians.",
        "",
        *tables(rounds),
        "",
    ]
