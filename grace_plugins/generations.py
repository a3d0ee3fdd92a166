"""The generations as the supervisor's rules see them: numbers and pids, in three roles.

One *pending* generation (starting: it has a ready deadline), one *current* (serving) and the
*draining* ones, oldest first, each with a kill deadline past its own drain deadline. The
methods here change those roles and return the actions a change implies (drain orders, the
state file's list of draining generations); they decide nothing else, call nothing back, start
no process and read no clock. :class:`grace_plugins.rules.Rules` decides when they are called.
"""

from __future__ import annotations

from dataclasses import dataclass

from grace_plugins import actions as act
from grace_plugins.actions import Action
from grace_plugins.options import Options

#: Extra time a draining generation gets past its own drain deadline before SIGKILL.
KILL_GRACE = 5.0


@dataclass
class Gen:
    """What the rules know of one generation."""

    number: int
    pid: int
    started: float  # when its start was decided (a retry keeps the first attempt's)
    deadline: float  # ready deadline while pending, kill deadline while draining
    ready_at: float | None = None
    drain_deadline: float | None = None  # the generation's own (what ``status`` shows)
    cut: bool = False
    left: int | None = None  # connections it still holds, as it last said while draining
    warm: bool = False  # forked from the warm-start template
    cold_retry: bool = False  # started again cold after its warm start failed
    saved_at: float | None = None  # started for a file saved then (the watcher's first event)

    def __str__(self) -> str:
        if not self.pid:  # not started (yet): its spawn failed
            return f"generation {self.number}"
        return f"generation {self.number} (pid {self.pid})"


class Generations:
    """The pending, current and draining generations, and the counter that numbers them."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.current: Gen | None = None
        self.pending: Gen | None = None
        self.draining: list[Gen] = []
        self.counter = 0

    def all(self) -> list[Gen]:
        """Every live generation: pending, current, then draining (oldest first)."""
        return [g for g in [self.pending, self.current, *self.draining] if g is not None]

    def find(self, number: int) -> Gen | None:
        return next((g for g in self.all() if g.number == number), None)

    @property
    def quiet(self) -> bool:
        """Nothing starts and nothing drains."""
        return self.pending is None and not self.draining

    def adopt(self, number: int, pid: int, counter: int, now: float) -> None:
        """Serve with a generation a previous image of the supervisor ran (after USR2)."""
        self.current = Gen(number, pid, now, now, ready_at=now)
        self.counter = counter

    def start(self, now: float) -> Gen:
        """Number a new pending generation (its pid comes with ``Spawned``)."""
        self.counter += 1
        self.pending = Gen(self.counter, 0, now, now + self.options.ready_timeout)
        return self.pending

    def restart_cold(self, gen: Gen, now: float) -> Gen:
        """The same generation again, started cold, with a fresh ready deadline."""
        self.pending = Gen(gen.number, 0, gen.started, now + self.options.ready_timeout)
        self.pending.cold_retry, self.pending.saved_at = True, gen.saved_at
        return self.pending

    def promote(self, gen: Gen, now: float) -> Gen | None:
        """*gen* (pending) is ready: it serves now; return the one it replaces, if any."""
        gen.ready_at = now
        old, self.current, self.pending = self.current, gen, None
        return old

    def stop(self, now: float) -> list[Action]:
        """A graceful stop: the pending generation is killed (its spawn may still be answered:
        it never serves), the current one drains."""
        out: list[Action] = []
        if self.pending is not None:
            out += [act.Kill(self.pending.number, wait=True), act.Forget(self.pending.number)]
            self.pending = None
        if self.current is not None:
            out += self.retire(self.current, now)
            self.current = None
        return out

    def retire(self, gen: Gen, now: float) -> list[Action]:
        """Drain *gen* to its own deadline; past ``max_draining``, cut the oldest short."""
        gen.drain_deadline = now + self.options.drain_timeout
        gen.deadline = gen.drain_deadline + KILL_GRACE
        self.draining.append(gen)
        out: list[Action] = [act.Drain(gen.number)]
        uncut = [g for g in self.draining if not g.cut]
        if len(uncut) > self.options.max_draining:
            out += self._cut(now, uncut[0], len(uncut))
        return [*out, self.record()]

    def _cut(self, now: float, gen: Gen, count: int) -> list[Action]:
        gen.cut = True
        gen.drain_deadline = now
        gen.deadline = min(gen.deadline, now + KILL_GRACE)
        return [
            act.warning(
                "%s drain cut short: %d generations draining, more than max_draining=%d;"
                " what it still holds is closed now",
                gen,
                count,
                self.options.max_draining,
            ),
            act.Drain(gen.number),  # a second drain order: the deadline is now
        ]

    def overdue_drains(self, now: float) -> list[Action]:
        """Kill the draining generations past their kill deadline (again every second)."""
        out: list[Action] = []
        for gen in self.draining:
            if now >= gen.deadline:
                out += [
                    act.error("%s still running after its drain deadline: killed", gen),
                    act.Kill(gen.number),
                ]
                gen.deadline = now + 1.0
        return out

    def left(self, number: int, count: int) -> list[Action]:
        """A draining generation said how many connections it holds: record a change."""
        gen = next((g for g in self.draining if g.number == number), None)
        if gen is None or gen.left == count:
            return []
        gen.left = count
        return [self.record()]

    def drained(self, gen: Gen) -> list[Action]:
        """A draining generation exited."""
        self.draining.remove(gen)
        return [act.Forget(gen.number), self.record()]

    def record(self) -> act.RecordDraining:
        """The draining generations, as the state file shows them."""
        return act.RecordDraining(
            tuple(
                act.Draining(g.number, g.pid, g.drain_deadline or g.deadline, g.cut, g.left)
                for g in self.draining
            )
        )
