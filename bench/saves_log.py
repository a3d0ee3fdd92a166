"""What a grace server's log says about each upgrade of a ``bench/saves.py`` row: what started it
(a file change or SIGHUP), the generation and pid, warm or cold, and the supervisor's own account
of where a save's time went (``... the saved change is served N ms after the save (A ms to hear
it, B ms to start and be ready)``). Pure functions of the log's text."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = r"\[grace_plugins\] \[supervisor \d+\] "
STARTED = re.compile(
    _PREFIX + r"upgrade started \((?P<reason>.*)\): generation (?P<gen>\d+) \(pid (?P<pid>\d+)\)$"
)
QUEUED = re.compile(_PREFIX + r"upgrade \((?P<reason>.*)\) queued: ")
READY = re.compile(
    _PREFIX + r"generation (?P<gen>\d+) \(pid (?P<pid>\d+)\) ready after (?P<ready>\d+) ms;"
    r" generation \d+ \(pid \d+\) drains"
    r"(?:; the saved change is served (?P<served>\d+) ms after the save"
    r" \((?P<heard>-?\d+) ms to hear it, (?P<start>\d+) ms to start and be ready\))?"
)
FORKED = re.compile(_PREFIX + r"warm start: pid (?P<pid>\d+) forked from the template")
COLD_AGAIN = re.compile(_PREFIX + r"generation \d+ \(pid \d+\) started cold$")
ROLLED_BACK = re.compile(_PREFIX + r"upgrade rolled back")


@dataclass
class LoggedUpgrade:
    """One upgrade as the supervisor logged it."""

    gen: int
    pid: int
    trigger: str  # "save" (the watcher heard a file change) or "HUP"
    reason: str
    offset: int  # where its "upgrade started" line ends in the log, in bytes
    warm: bool = False
    ready_ms: int | None = None  # spawn to ready
    served_ms: int | None = None  # the save's first event to ready (saves only)
    heard_ms: int | None = None  # first event to the spawn: the watcher's share
    start_ms: int | None = None  # spawn to ready: the new generation's share


@dataclass
class LogAccount:
    upgrades: list[LoggedUpgrade]
    queued: int  # triggers coalesced into a follow-up upgrade
    rolled_back: int
    cold_retries: int  # generations forked warm that failed and were started again cold

    def of(self, trigger: str) -> list[LoggedUpgrade]:
        return [u for u in self.upgrades if u.trigger == trigger]


def read_log(raw: bytes) -> LogAccount:
    """Every upgrade the supervisor started, where its line is in the log (a byte offset, to
    be compared with the log's size when each event was made), and what later lines say of
    it. Pids are matched by their place in the log: a busy machine reuses them within minutes."""
    by_gen: dict[int, LoggedUpgrade] = {}
    last_forked = 0
    queued = rolled_back = cold_retries = offset = 0
    for raw_line in raw.splitlines(keepends=True):
        line = raw_line.decode("utf-8", "replace").rstrip("\n")
        offset += len(raw_line)
        if found := STARTED.search(line):
            reason, pid = found["reason"], int(found["pid"])
            trigger = "save" if reason.startswith("file changed") else "HUP"
            gen = int(found["gen"])
            by_gen[gen] = LoggedUpgrade(gen, pid, trigger, reason, offset, pid == last_forked)
        elif found := READY.search(line):
            upgrade = by_gen.get(int(found["gen"]))
            if upgrade is not None:
                if upgrade.pid != int(found["pid"]):  # retried cold: another process
                    upgrade.pid, upgrade.warm = int(found["pid"]), False
                upgrade.ready_ms = int(found["ready"])
                if found["served"] is not None:
                    upgrade.served_ms = int(found["served"])
                    upgrade.heard_ms = int(found["heard"])
                    upgrade.start_ms = int(found["start"])
        elif found := FORKED.search(line):
            last_forked = int(found["pid"])
        elif QUEUED.search(line):
            queued += 1
        elif ROLLED_BACK.search(line):
            rolled_back += 1
        elif COLD_AGAIN.search(line):
            cold_retries += 1
    upgrades = sorted(by_gen.values(), key=lambda u: u.gen)
    return LogAccount(upgrades, queued, rolled_back, cold_retries)
