"""The numbers of one ``bench/saves.py`` row (what the clients saw, what the log says) and the
tables made of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from procmem import Proc
from saves_log import LoggedUpgrade, read_log

if TYPE_CHECKING:
    from saves import Events, Plan, SaveLoad


@dataclass
class Result:
    key: str
    label: str
    grace: bool
    saves: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # save → first answer, per save
    never_served: list[str] = field(default_factory=list)
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    skipped: str = ""
    log_tail: str = ""
    #: The machine's 1-minute load average as the row began and as it ended (2 cores shared).
    load_average: tuple[float, float] = (0.0, 0.0)
    # -- ours: from the supervisor's log, and the HUPs ---------------------------------------------
    heard_ms: list[int] = field(default_factory=list)  # first event to the spawn
    start_ms: list[int] = field(default_factory=list)  # spawn to ready
    rest_ms: list[float] = field(default_factory=list)  # the rest of save → first answer
    hup_ms: list[float] = field(default_factory=list)  # HUP → the new generation's first answer
    hup_never: list[str] = field(default_factory=list)
    save_upgrades: int = 0  # upgrades the watcher started
    hup_upgrades: int = 0
    warm_upgrades: int = 0  # of both, forked from the warm-start template
    heard_twice: list[str] = field(default_factory=list)  # versions two save upgrades served
    not_heard: list[str] = field(default_factory=list)  # saves no save upgrade served
    queued: int = 0
    rolled_back: int = 0
    cold_retries: int = 0
    supervisor_start: Proc | None = None  # the process the user started, before the saves
    supervisor_end: Proc | None = None  # and after


def account(result: Result, load: SaveLoad, events: Events, log: bytes) -> None:
    """Fill *result* from what the clients saw and (ours) what the log says: each upgrade is
    the save's (or the HUP's) whose event came last before its line in the log."""
    for version, moment in events.saved.items():
        answered = load.first_answer.get(version)
        if answered is None:
            result.never_served.append(version)
        else:
            result.latencies_ms.append(round((answered - moment) * 1000, 1))
    result.requests = load.requests
    result.failures = dict(load.failures)
    result.examples = load.examples
    if not log:
        return
    logged = read_log(log)
    result.queued, result.rolled_back = logged.queued, logged.rolled_back
    result.cold_retries = logged.cold_retries
    result.warm_upgrades = sum(u.warm for u in logged.upgrades)
    result.save_upgrades, result.hup_upgrades = len(logged.of("save")), len(logged.of("HUP"))
    for version, moment in events.saved.items():
        heard = _after(logged.of("save"), version, events.saved_at)
        if len(heard) > 1:
            result.heard_twice.append(version)
        if not heard:
            result.not_heard.append(version)
        elif heard[0].served_ms is not None and version in load.first_answer:
            result.heard_ms.append(heard[0].heard_ms or 0)
            result.start_ms.append(heard[0].start_ms or 0)
            client_ms = (load.first_answer[version] - moment) * 1000
            result.rest_ms.append(round(client_ms - heard[0].served_ms, 1))
    for version, moment in events.hups.items():
        started = _after(logged.of("HUP"), version, events.hup_at)
        seen = [load.first_of_process.get((u.pid, version), 0.0) for u in started]
        firsts = [when for when in seen if when > moment]
        if firsts:
            result.hup_ms.append(round((min(firsts) - moment) * 1000, 1))
        else:
            result.hup_never.append(version)


def _after(
    upgrades: list[LoggedUpgrade], version: str, offsets: dict[str, int]
) -> list[LoggedUpgrade]:
    """The upgrades whose line is after *version*'s event and before the next of its kind."""
    begin = offsets[version]
    later = [o for o in offsets.values() if o > begin]
    end = min(later) if later else float("inf")
    return [u for u in upgrades if begin <= u.offset < end]


def spread(values: Sequence[float]) -> str:
    """min / median / max in ms, or "never" if nothing was served."""
    if not values:
        return "never"
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f}" if values else "–"


def save_over_hup(res: Result) -> str:
    if not res.latencies_ms or not res.hup_ms:
        return "–"
    return f"{statistics.median(res.latencies_ms) / statistics.median(res.hup_ms):.2f}"


def _failed(res: Result) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(res.failures.items()))
    failed = sum(res.failures.values())
    return f"{failed:,} of {res.requests:,}{f' ({kinds})' if kinds else ''}"


def describe(res: Result) -> str:
    if res.skipped:
        return f"{res.label}: skipped: {res.skipped}"
    hup = f", HUP {spread(res.hup_ms)} ms" if res.grace else ""
    return (
        f"{res.label}: save {spread(res.latencies_ms)} ms{hup}, never served"
        f" {len(res.never_served)} of {res.saves}, failed {_failed(res)}"
        f" (load average {res.load_average[0]:.1f} → {res.load_average[1]:.1f})"
    )


def header(*columns: str) -> list[str]:
    """A markdown table's first two lines."""
    return [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]


def main_table(results: list[Result]) -> list[str]:
    lines = header(
        "server",
        "save → new code, ms: min / median / max",
        "hear / start and ready / rest, median ms",
        "HUP → new generation, ms: min / median / max",
        "save ÷ HUP (medians)",
        "saves never served",
        "failed requests",
        "load average",
    )
    for res in results:
        if res.skipped:
            lines.append(f"| {res.label} | skipped: {res.skipped} | | | | | | |")
            continue
        where = (
            f"{_median(res.heard_ms)} / {_median(res.start_ms)} / {_median(res.rest_ms)}"
            if res.grace
            else "–"
        )
        hup = spread(res.hup_ms) if res.grace else "–"
        lines.append(
            f"| {res.label} | {spread(res.latencies_ms)} | {where} | {hup} | {save_over_hup(res)}"
            f" | {len(res.never_served)} of {res.saves} | {_failed(res)}"
            f" | {res.load_average[0]:.1f} → {res.load_average[1]:.1f} |"
        )
    return lines


def _proc(start: Proc | None, end: Proc | None) -> tuple[str, str]:
    if start is None or end is None:
        return "–", "–"
    return f"{start.pss / 1024:.1f} → {end.pss / 1024:.1f}", f"{start.fds} → {end.fds}"


def account_table(results: list[Result]) -> list[str]:
    lines = header(
        "server",
        "upgrades the watcher started, for saves",
        "saves heard twice",
        "saves not heard",
        "HUPs never served",
        "warm upgrades",
        "rolled back",
        "PSS of the process started, MB",
        "its fds",
    )
    for res in results:
        if res.skipped:
            continue
        pss, fds = _proc(res.supervisor_start, res.supervisor_end)
        if not res.grace:
            lines.append(f"| {res.label} | – | – | – | – | – | – | {pss} | {fds} |")
            continue
        upgrades = res.save_upgrades + res.hup_upgrades
        lines.append(
            f"| {res.label} | {res.save_upgrades} for {res.saves}"
            f" | {len(res.heard_twice)} | {len(res.not_heard)}"
            f" | {len(res.hup_never)} of {res.saves}"
            f" | {res.warm_upgrades} of {upgrades}"
            f"{f' ({res.cold_retries} retried cold)' if res.cold_retries else ''}"
            f" | {res.rolled_back} | {pss} | {fds} |"
        )
    return lines


def tables(results: list[Result]) -> list[str]:
    return [*main_table(results), "", *account_table(results)]


def section(results: list[Result], plan: Plan) -> list[str]:
    """The section of ``docs/benchmarks.md``."""
    if not results:
        return []
    return [
        "## Save → new code (bench/saves.py)",
        "",
        f"Each server, started alone on a fresh copy of its app and loaded by the end-to-end"
        " harness's clients (2 opening a fresh connection per request, 2 reusing a keep-alive"
        " connection, 2 keep-alive connections idle 1 s between requests; none retries), gets"
        f" its version module saved {plan.saves} times as an editor saves (a temporary file renamed"
        " over it). *save → new code*: from the save to the first answer carrying the new"
        " version; a version that never answered before the next save is *never served*. Our"
        " servers also get, one interval after each save, a `kill -HUP` with nothing"
        " changed, on the same process: *HUP → new generation* is from the HUP to the first"
        " answer of the generation it started (the upgrade's own time), so *save ÷ HUP* (ratio"
        " of the medians) is what the watcher adds. *hear / start and ready / rest*: the"
        " supervisor's own account of each save (`... served N ms after the save (A ms to hear"
        " it, B ms to start and be ready)`: from the watcher's first event to the spawn, then"
        " to ready), and the rest of the client's time (from ready to the first answer"
        f" reaching a client). Events are {plan.interval:g} s apart, each moved at random by up"
        f" to ±{plan.jitter:g} s so that none keeps one phase of the idle clients' 1 s cadence"
        " (ours: save, HUP, save ...; theirs: saves only). Theirs: `runserver` (Django's"
        " StatReloader, 1 s polls),"
        " `flask run --reload` with werkzeug's stat reloader (1 s polls; watchdog made"
        " unimportable) and as installed (watchdog 7, whose inotify queue overflows on this"
        " machine).",
        "",
        *main_table(results),
        "",
        "What the logs and `/proc` say of the same runs: how many upgrades the watcher started"
        " for the saves (one each: none missed, none doubled), how many were forked warm, and"
        " the process the user started (our supervisor; their reloader's parent) before the"
        " first save and after the last (PSS, open fds): nothing should grow.",
        "",
        *account_table(results),
        "",
    ]
