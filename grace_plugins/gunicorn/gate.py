"""The readiness gate between generations of gunicorn workers: records and verdicts.

Gunicorn's master has no notion of "the new workers are ready", so the workers coordinate
through a private directory of small record files (``mkdtemp``, 0700) that they inherit by fork.
Reading the records (:meth:`GateDir.facts`) and judging them (:func:`judge`, pure) are apart
from publishing a verdict (:meth:`GateDir.publish`, first writer wins). The files:

* ``gen-G.json`` -- written by the master (in the worker class's constructor, which gunicorn
  runs in the master before each fork) when it first builds a worker from a new ``Config``,
  i.e. on start and on every HUP: how many workers generation *G* has and its ready timeout;
* ``w-G-AGE-PID.STATE`` -- a worker's own progress: ``boot``, ``ready``, ``failed`` (with the
  reason), ``stopping`` (it received a SIGTERM that was not part of a reload);
* ``resolved-G`` -- the verdict on generation *G*, written once (``O_EXCL``) by whichever worker
  first sees it: ``promoted`` (every member ready) or ``rolled back: reason``.

A generation's *members* are the ``expected`` workers the reload forked (gunicorn's ages
``first_age`` and up, recorded by the master before the first fork).
Workers forked later in the same generation (a respawn after a crash, ``max_requests``, TTIN)
are not part of the gate.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from grace_plugins.process import pid_alive

PENDING = "pending"
PROMOTED = "promoted"
ROLLED_BACK = "rolled back"
STOPPING = "stopping"

#: How long past its ready timeout a generation may stay undecided (its own watchdog exits a
#: hanging worker at the timeout; this covers a worker killed before it could say so).
GRACE_SECONDS = 3.0
#: Records of generations this much older than the newest are pruned.
KEEP_GENERATIONS = 4

_RECORD = re.compile(r"^w-(\d+)-(\d+)-(\d+)\.(\w+)$")
_GEN = re.compile(r"^gen-(\d+)\.json$")


@dataclass(frozen=True)
class Member:
    """One worker: its generation, gunicorn's age (a spawn counter) and pid."""

    gen: int
    age: int
    pid: int


class GateDir:
    """The shared record directory; every method is a few file operations and never raises."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> GateDir:
        """Make a fresh private directory (mode 0700: no other user can write a record)."""
        return cls(tempfile.mkdtemp(prefix="grace-gunicorn-"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- files ----------------------------------------------------------------------------------
    def _write(self, name: str, text: str = "", exclusive: bool = False) -> bool:
        """Publish *name* with its whole *text* at once: readers never see it empty or half
        written (a verdict read mid-write once passed for a rollback). The text goes to a
        private temporary file first, then is renamed into place, or, when *exclusive*, linked
        (``link`` fails if the name exists: exactly one writer wins). Returns whether it was
        published."""
        tmp = os.path.join(self.path, f".tmp-{os.getpid()}-{threading.get_ident()}")
        final = os.path.join(self.path, name)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(tmp, flags, 0o600), "w") as handle:
                handle.write(text)
            if exclusive:
                os.link(tmp, final)
            else:
                os.replace(tmp, final)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.path, name)) as handle:
                return handle.read()
        except OSError:
            return None

    def _mtime(self, name: str) -> float | None:
        try:
            return os.stat(os.path.join(self.path, name)).st_mtime
        except OSError:
            return None

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except OSError:
            return []

    # -- generations (written by the master) ------------------------------------------------------
    def open_generation(
        self, gen: int, expected: int, ready_timeout: float, first_age: int = 0
    ) -> None:
        """Announce generation *gen* (before its first fork); prune old records. Its members
        are the *expected* workers the master forks next: ages ``first_age`` and up."""
        info = {
            "expected": expected,
            "first_age": first_age,
            "started": time.monotonic(),
            "ready_timeout": ready_timeout,
        }
        self._write(f"gen-{gen}.json", json.dumps(info))
        for name in self._names():
            found = _RECORD.match(name) or _GEN.match(name) or re.match(r"^\w+-(\d+)$", name)
            if found and int(found.group(1)) < gen - KEEP_GENERATIONS:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, name))

    def generation_info(self, gen: int) -> dict | None:
        text = self._read(f"gen-{gen}.json")
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def newest_generation(self) -> int:
        found = [int(m.group(1)) for m in map(_GEN.match, self._names()) if m]
        return max(found, default=0)

    # -- workers ----------------------------------------------------------------------------------
    def record(self, member: Member, state: str, detail: str = "") -> None:
        self._write(f"w-{member.gen}-{member.age}-{member.pid}.{state}", detail)
        if state == "ready":
            self._write("ever-ready")
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, "backoff"))

    def workers(self, gen: int) -> dict[Member, dict[str, str]]:
        """Every worker of *gen* that left a record, with its states (and their details)."""
        found: dict[Member, dict[str, str]] = {}
        for name in self._names():
            match = _RECORD.match(name)
            if match and int(match.group(1)) == gen:
                member = Member(gen, int(match.group(2)), int(match.group(3)))
                detail = self._read(name) if match.group(4) == "failed" else ""
                found.setdefault(member, {})[match.group(4)] = detail or ""
        return found

    def members(self, gen: int) -> list[Member]:
        return member_list(self.generation_info(gen), self.workers(gen))

    def ever_ready(self) -> bool:
        """Whether any worker of this master ever became ready (else nothing is serving)."""
        return self._read("ever-ready") is not None

    def bump_backoff(self) -> int:
        """Count one more failed respawn in a row; return the new count."""
        count = int((self._read("backoff") or "0").strip() or 0) + 1
        self._write("backoff", str(count))
        return count

    def claim(self, what: str, gen: int) -> bool:
        """True for the first caller only (e.g. who logs a generation's traceback)."""
        return self._write(f"{what}-{gen}", "", exclusive=True)

    # -- verdicts ---------------------------------------------------------------------------------
    def resolution(self, gen: int) -> str | None:
        return self._read(f"resolved-{gen}")

    def resolution_time(self, gen: int) -> float | None:
        """When the verdict on *gen* was recorded (wall clock, like ``time.time()``)."""
        return self._mtime(f"resolved-{gen}")

    def facts(self, gen: int) -> Facts:
        """What the records say about *gen* (reads only)."""
        verdict = self.resolution(gen)
        verdict_time = self.resolution_time(gen) if verdict is not None else None
        stops = []
        for name in self._names():
            match = _RECORD.match(name)
            if match and int(match.group(1)) == gen and match.group(4) == "stopping":
                stops.append(self._mtime(name))
        return Facts(
            self.generation_info(gen), self.workers(gen), verdict, verdict_time, tuple(stops)
        )

    def status(
        self, gen: int, now: float | None = None, alive: Callable[[int], bool] = pid_alive
    ) -> Verdict:
        """The verdict on *gen* from its records (a query: it writes nothing; see
        :meth:`publish`)."""
        return judge(self.facts(gen), now, alive)

    def publish(self, gen: int, verdict: Verdict) -> bool:
        """Record a new verdict on *gen*, once: True for the one caller that recorded it."""
        if not verdict.new:
            return False
        text = PROMOTED if verdict.status == PROMOTED else verdict.reason
        return self._write(f"resolved-{gen}", text, exclusive=True)


@dataclass(frozen=True)
class Facts:
    """The records of one generation, as :meth:`GateDir.facts` read them."""

    info: dict | None
    workers: dict[Member, dict[str, str]]
    verdict: str | None = None  # the published verdict, if any
    verdict_time: float | None = None  # when it was published (wall clock)
    stops: tuple[float | None, ...] = ()  # when its workers recorded a plain SIGTERM

    def stopped_before_verdict(self) -> bool:
        """A plain SIGTERM recorded before the verdict: the master is stopping."""
        if self.verdict_time is None:
            return bool(self.stops)
        limit = self.verdict_time
        return any(when is not None and when <= limit for when in self.stops)


@dataclass(frozen=True)
class Verdict:
    """A generation's status; ``new`` when judged from the records and not published yet."""

    status: str
    reason: str = ""
    new: bool = False


def judge(
    facts: Facts, now: float | None = None, alive: Callable[[int], bool] = pid_alive
) -> Verdict:
    """The gate's rules (pure), in order:

    * a published rollback stays a rollback, unless a worker recorded a plain SIGTERM before it
      (after a rollback the master SIGTERMs the failed workers as surplus): then ``STOPPING``;
    * a worker of the generation recorded a plain SIGTERM: ``STOPPING`` (the master stops);
    * a published promotion stays a promotion;
    * else :func:`evaluate` decides from the records (a *new* verdict) or it is ``PENDING``.
    """
    if facts.verdict is not None and facts.verdict != PROMOTED:
        if facts.stopped_before_verdict():
            return Verdict(STOPPING, "the master is stopping")
        return Verdict(ROLLED_BACK, facts.verdict)
    if any("stopping" in states for states in facts.workers.values()):
        return Verdict(STOPPING, "the master is stopping")
    if facts.verdict == PROMOTED:
        return Verdict(PROMOTED)
    status, reason = evaluate(facts.info, facts.workers, now, alive)
    return Verdict(status, reason, new=status != PENDING)


#: A SIGTERM recorded this long after a rollback verdict is a real stop, not the reload's.
TERM_SLACK = 0.5
DRAIN, WAIT, FORGET = "drain", "wait", "forget"


def on_pending_term(
    own: int, later: Mapping[int, str], last_term: float, rolled_back_at: float | None
) -> tuple[str, str]:
    """What a worker of generation *own* does with a SIGTERM it holds (pure): ``(DRAIN,
    why)``, ``(WAIT, "")`` or ``(FORGET, "")``. *later*: the status of every generation after
    *own* (the newest is the highest); *last_term*: when the worker got its last SIGTERM;
    *rolled_back_at*: when the newest was rolled back, if it was.

    * no newer generation: the SIGTERM is a stop;
    * the newest is stopping (the master stops) or promoted: drain;
    * any generation between *own* and the newest was promoted: drain (this code is replaced,
      whatever becomes of the newest);
    * the newest was rolled back: forget the reload's SIGTERM, unless it came after the verdict
      (then it is a real stop);
    * else the newest is still starting: wait.
    """
    newest = max(later, default=own)
    if newest <= own:
        return DRAIN, "SIGTERM"
    status = later[newest]
    if status == STOPPING:
        return DRAIN, "SIGTERM (the master is stopping)"
    if status == PROMOTED:
        return DRAIN, f"generation {newest} is ready"
    between = [gen for gen, st in later.items() if own < gen < newest and st == PROMOTED]
    if between:
        return DRAIN, f"generation {max(between)} is ready"
    if status == ROLLED_BACK:
        if last_term > (rolled_back_at or 0.0) + TERM_SLACK:
            return DRAIN, "SIGTERM"
        return FORGET, ""
    return WAIT, ""


def evaluate(
    info: dict | None,
    workers: dict[Member, dict[str, str]],
    now: float | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> tuple[str, str]:
    """Judge a generation from its records (pure): all members ready -> promoted; a member
    failed, died before ready, or the ready timeout passed -> rolled back; else pending."""
    if info is None:
        return ROLLED_BACK, "its announcement is missing"
    now = time.monotonic() if now is None else now
    expected = int(info["expected"])
    members = member_list(info, workers)
    for member in members:
        states = workers[member]
        if "failed" in states:
            return ROLLED_BACK, f"worker {member.pid} failed: {states['failed']}"
    for member in members:
        if "ready" not in workers[member] and not alive(member.pid):
            return ROLLED_BACK, f"worker {member.pid} exited before it was ready"
    if len(members) == expected and all("ready" in workers[m] for m in members):
        return PROMOTED, ""
    limit = float(info["ready_timeout"]) + GRACE_SECONDS
    if now > float(info["started"]) + limit:
        return ROLLED_BACK, f"not every new worker was ready within {limit:g} s"
    return PENDING, ""


def pid_list(members: Iterable[Member]) -> str:
    """The pids of *members*, comma-separated, as logs, ``STATUS=`` and the state file show."""
    return ",".join(str(m.pid) for m in members)


def member_list(info: dict | None, workers: dict[Member, dict[str, str]]) -> list[Member]:
    """The workers of a generation that its reload forked (later respawns are not members)."""
    if not info:
        return []
    first, expected = int(info.get("first_age", 0)), int(info["expected"])
    if first <= 0:  # an announcement without ages: the first ones by age
        return sorted(workers, key=lambda m: m.age)[:expected]
    return sorted((m for m in workers if first <= m.age < first + expected), key=lambda m: m.age)
