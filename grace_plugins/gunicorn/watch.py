"""A worker's watch over the generations: it takes each verdict from the records, records a new
one once (the first worker to see it), logs it, and tells the worker what its own generation's
verdict and a held SIGTERM mean for it. The worker carries out what it is told.
"""

from __future__ import annotations

import time
from typing import Any

from grace_plugins.gunicorn.held_term import WAIT, on_held_term
from grace_plugins.gunicorn.records import RecordStore
from grace_plugins.gunicorn.verdicts import (
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    Member,
    Verdict,
    forked_by_reload,
    pid_list,
    verdict,
)
from grace_plugins.process import pid_alive


class Watch:
    """The verdicts as one worker (*member*) sees them."""

    def __init__(self, store: RecordStore, member: Member, log: Any) -> None:
        self.store = store
        self.member = member
        self.log = log
        self.own_decided = False
        #: the generation a held SIGTERM waits for (:meth:`held_term` said WAIT), if any
        self.awaited: int | None = None

    def verdict_on(self, gen: int) -> Verdict:
        """The verdict on *gen*. A new one is recorded, and logged by the one worker that
        recorded it (if another worker recorded first, its verdict is the verdict)."""
        found = verdict(self.store.generation(gen), time.monotonic(), pid_alive)
        if not found.new:
            return found
        if self.store.record_verdict(gen, found):
            self._log(gen, found)
            return found
        return verdict(self.store.generation(gen), time.monotonic(), pid_alive)

    def own_generation(self) -> str:
        """Watch this worker's own generation until it has a verdict; returns why the worker
        must stop ("" if it serves on): a generation some of whose members failed is not
        trusted, all or nothing."""
        if self.own_decided:
            return ""
        found = self.verdict_on(self.member.gen)
        if found.kind == PENDING:
            return ""
        self.own_decided = True
        if found.kind == ROLLED_BACK and self.is_member():
            return f"generation {self.member.gen} was rolled back"
        return ""

    def stillborn(self) -> str:
        """Why this worker must not even import the app ("" if it may): gunicorn forks a
        reload's workers one after another, and a member forked after a sibling already failed
        belongs to a generation that is rolled back (its import would only fail again, or
        serve nothing)."""
        gen = self.member.gen
        if gen < 2 or not forked_by_reload(self.store.announcement(gen), self.member.age):
            return ""
        found = self.verdict_on(gen)
        return f"generation {gen} was rolled back" if found.kind == ROLLED_BACK else ""

    def is_member(self) -> bool:
        """Whether this worker is one of those its reload forked (not a respawn), in a
        generation opened by a HUP (the first one has nothing to roll back to)."""
        gen = self.member.gen
        return gen >= 2 and self.member in self.store.members(gen)

    def held_term(self, last_term: float) -> tuple[str, str]:
        """What to do with the SIGTERM this worker holds, received at *last_term* (wall clock):
        see :func:`~grace_plugins.gunicorn.held_term.on_held_term`."""
        own = self.member.gen
        newest = self.store.newest_generation()
        later = {gen: self.verdict_on(gen).kind for gen in range(own + 1, newest + 1)}
        rolled_back_at = (
            self.store.verdict_time(newest) if later.get(newest) == ROLLED_BACK else None
        )
        action, why = on_held_term(
            own,
            later,
            master_stopping=self.store.master_stopping(),
            last_term=last_term,
            rolled_back_at=rolled_back_at,
        )
        self.awaited = newest if action == WAIT else None
        return action, why

    def awaited_decided(self) -> bool:
        """Whether the generation a held SIGTERM waits for has a verdict now: one ``stat``,
        cheap enough to ask between full looks."""
        return self.awaited is not None and self.store.has_verdict(self.awaited)

    def _log(self, gen: int, found: Verdict) -> None:
        if found.kind == PROMOTED:
            serving = self.store.members(gen)
            self.log.info(
                "grace_plugins: generation %s ready: %s workers serving (pids %s)%s",
                gen,
                len(serving),
                pid_list(serving),
                "; the previous workers drain" if gen > 1 else "",
            )
        elif gen > 1:
            self.log.error(
                "grace_plugins: generation %s rolled back (%s); the previous workers keep serving",
                gen,
                found.reason,
            )
        else:
            self.log.warning(
                "grace_plugins: generation %s started incomplete (%s)", gen, found.reason
            )
