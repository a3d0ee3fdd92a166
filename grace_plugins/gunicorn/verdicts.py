"""The verdict on a generation of gunicorn workers, from its records (pure: no file, no clock).

A generation is the set of workers that gunicorn forks from one ``Config`` (the start, every
HUP). Its *members* are the workers the master announced before the first fork (gunicorn's
ages ``first_age`` and up); workers forked later in the same generation (a respawn after a
crash, ``max_requests``, TTIN) are not members. The verdict on it is one of:

* ``PENDING``: not every member is ready yet, and none failed;
* ``PROMOTED``: every member imported the app and accepts;
* ``ROLLED_BACK``: a member failed (the reason says which and why), died before it was ready,
  or the members were not all ready within the ready timeout (plus :data:`GRACE_SECONDS`).

A verdict, once recorded, stands. While the master stops, an undecided generation stays
``PENDING``: the stop, not the new code, ended it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

PENDING = "pending"
PROMOTED = "promoted"
ROLLED_BACK = "rolled back"

#: How long past its ready timeout a generation may stay undecided (each worker's own watchdog
#: exits at the timeout; this covers a worker killed before it could say so).
GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class Member:
    """One worker: its generation, gunicorn's age (a spawn counter) and pid."""

    gen: int
    age: int
    pid: int


@dataclass(frozen=True)
class Announcement:
    """What the master says about a generation before forking it."""

    expected: int  # how many workers the reload forks
    first_age: int  # gunicorn's age of the first of them (0: unknown, the first ones by age)
    started: float  # time.monotonic() in the master when it was announced
    ready_timeout: float


@dataclass(frozen=True)
class GenerationRecords:
    """Everything the record directory says about one generation."""

    announcement: Announcement | None
    #: every worker of the generation that left a record, with its states (a failure's reason)
    workers: dict[Member, dict[str, str]] = field(default_factory=dict)
    #: the verdict recorded for it, as written (``PROMOTED`` or the reason of a rollback)
    recorded: str | None = None
    master_stopping: bool = False


@dataclass(frozen=True)
class Verdict:
    """The verdict on a generation; ``new`` when decided from the records and not recorded."""

    kind: str  # PENDING, PROMOTED or ROLLED_BACK
    reason: str = ""
    new: bool = False

    def as_recorded(self) -> str:
        """The text a recorded verdict holds (see :func:`from_recorded`)."""
        return PROMOTED if self.kind == PROMOTED else self.reason

    @classmethod
    def from_recorded(cls, text: str) -> Verdict:
        return cls(PROMOTED) if text == PROMOTED else cls(ROLLED_BACK, text)


def verdict(records: GenerationRecords, now: float, alive: Callable[[int], bool]) -> Verdict:
    """The verdict on a generation (pure; *now* is ``time.monotonic()``, *alive* tells whether
    a pid still runs), by the first rule that applies:

    * a recorded verdict stands;
    * the master is stopping: ``PENDING`` (never decided);
    * no announcement: rolled back;
    * a member failed, or died before it was ready: rolled back, naming it;
    * every member is ready: promoted;
    * past the ready timeout plus :data:`GRACE_SECONDS`: rolled back;
    * else ``PENDING``.
    """
    if records.recorded is not None:
        return Verdict.from_recorded(records.recorded)
    if records.master_stopping:
        return Verdict(PENDING)
    info = records.announcement
    if info is None:
        return Verdict(ROLLED_BACK, "its announcement is missing", new=True)
    workers = records.workers
    found = members(info, workers)
    for member in found:
        if "failed" in workers[member]:
            return Verdict(
                ROLLED_BACK, f"worker {member.pid} failed: {workers[member]['failed']}", True
            )
    for member in found:
        if "ready" not in workers[member] and not alive(member.pid):
            return Verdict(ROLLED_BACK, f"worker {member.pid} exited before it was ready", True)
    if len(found) == info.expected and all("ready" in workers[m] for m in found):
        return Verdict(PROMOTED, new=True)
    limit = info.ready_timeout + GRACE_SECONDS
    if now > info.started + limit:
        return Verdict(ROLLED_BACK, f"not every new worker was ready within {limit:g} s", True)
    return Verdict(PENDING)


def forked_by_reload(info: Announcement | None, age: int) -> bool:
    """Whether the worker of gunicorn's *age* is one that the reload announced by *info* forks
    (a member), known from the ages alone, before the worker left any record."""
    if info is None or info.first_age <= 0:
        return False
    return info.first_age <= age < info.first_age + info.expected


def members(info: Announcement | None, workers: Iterable[Member]) -> list[Member]:
    """The workers of a generation that its reload forked (later respawns are not members),
    by age."""
    if info is None:
        return []
    if info.first_age <= 0:  # an announcement without ages: the first ones by age
        return sorted(workers, key=lambda m: m.age)[: info.expected]
    return sorted((m for m in workers if forked_by_reload(info, m.age)), key=lambda m: m.age)


def serving_workers(
    own: GenerationRecords, later: Iterable[GenerationRecords], alive: Callable[[int], bool]
) -> list[Member]:
    """The workers serving now, by age: the ready ones of the *serving* generation (*own*),
    and the ready respawns of *later* generations that were rolled back (gunicorn keeps the
    config of a rolled-back reload and forks its respawns with it: they carry its number)."""
    found = [m for m, states in own.workers.items() if "ready" in states]
    for records in later:
        if records.recorded is not None and records.recorded != PROMOTED:
            kept = set(members(records.announcement, records.workers))
            found += [m for m, s in records.workers.items() if "ready" in s and m not in kept]
    return sorted((m for m in found if alive(m.pid)), key=lambda m: m.age)


def still_accepting(
    older: Iterable[GenerationRecords], alive: Callable[[int], bool]
) -> list[Member]:
    """The live, ready workers of *older* generations that have not said they stopped
    accepting: a promotion's outcome waits for them (see ``MasterBook.step``)."""
    return [
        m
        for records in older
        for m, states in records.workers.items()
        if "ready" in states and "stopped" not in states and alive(m.pid)
    ]


def gone_respawns(
    info: Announcement | None, workers: Collection[Member], alive: Callable[[int], bool]
) -> list[Member]:
    """The respawns of a generation (workers its reload did not fork: ``max_requests``, a
    crash, TTIN) that have exited: their records can go, else every restart would leave two
    files for the generation's life, that the master and every worker list again and again.
    The members stay (the verdicts and the drains read them)."""
    if info is None:
        return []
    kept = set(members(info, workers))
    return [m for m in workers if m not in kept and not alive(m.pid)]


def pid_list(found: Iterable[Member]) -> str:
    """The pids of *found*, comma-separated, as logs, ``STATUS=`` and the state file show."""
    return ",".join(str(m.pid) for m in found)
