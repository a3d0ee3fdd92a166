"""What happens to generations, as the supervisor's rules see them (no process, no clock).

:class:`Lifecycle` holds the generations by number and pid: one *pending* (starting), one
*current* (serving), and the *draining* ones, oldest first. It decides what a start, a
``ready``, an exit or a rollback does to them; :class:`grace_plugins.rules.Rules` adds when
(pacing, deadlines, signals) and drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from grace_plugins import actions as act
from grace_plugins.actions import Action
from grace_plugins.errors import ExitCode
from grace_plugins.options import Options
from grace_plugins.pacing import Pacing, describe_status

#: Extra time a draining generation gets past its own drain deadline before SIGKILL.
KILL_GRACE = 5.0


@dataclass
class Gen:
    """What the rules know of one generation."""

    number: int
    pid: int
    started: float
    deadline: float  # ready deadline while pending, kill deadline while draining
    ready_at: float | None = None
    drain_deadline: float | None = None  # the generation's own (what ``status`` shows)
    cut: bool = False
    left: int | None = None  # connections it still holds, as it last said while draining

    def __str__(self) -> str:
        return f"generation {self.number} (pid {self.pid})"


class Lifecycle:
    """The generations and what events do to them; :class:`~grace_plugins.rules.Rules`
    supplies the pacing hooks (:meth:`_maybe_followup`, :meth:`_schedule_restart`,
    :meth:`stop`)."""

    def __init__(self, options: Options, listeners: list[str], pid: int) -> None:
        self.options = options
        self.listeners = listeners
        self.pid = pid  # the supervisor's, for the start-up line
        self.current: Gen | None = None
        self.pending: Gen | None = None
        self.draining: list[Gen] = []
        self.pace = Pacing(options.upgrade_interval)
        self.stopping = False
        self.stop_deadline: float | None = None
        self.exit_code = ExitCode.OK
        self.counter = 0
        self.reexec_requested = False
        self.adopted = False
        self._reason = ""  # why the pending generation starts, for its log line
        self._out: list[Action] = []

    def adopt(self, number: int, pid: int, counter: int, now: float) -> None:
        """Take over the generation a previous image of this supervisor ran (after USR2)."""
        self.current = Gen(number, pid, now, now, ready_at=now)
        self.counter = counter
        self.adopted = True

    def generations(self) -> list[Gen]:
        """Every live generation: pending, current, then draining (oldest first)."""
        return [g for g in [self.pending, self.current, *self.draining] if g is not None]

    def find(self, number: int) -> Gen | None:
        return next((g for g in self.generations() if g.number == number), None)

    def _emit(self, *actions: Action) -> None:
        self._out.extend(actions)

    def _start(self, now: float, reason: str) -> None:
        self.counter += 1
        # pending from now on (pid unknown until Spawned): nothing else may start meanwhile
        self.pending = Gen(self.counter, 0, now, now + self.options.ready_timeout)
        self._reason = reason
        self._emit(act.Spawn(self.counter))

    def _spawned(self, number: int, pid: int) -> None:
        gen = self.pending
        if gen is None or gen.number != number:
            return
        gen.pid = pid
        if self.current is not None:  # the interval paces upgrades, not starts and restarts
            self.pace.upgrade_started = gen.started
            self._emit(
                act.info("upgrade started (%s): %s", self._reason, gen),
                act.Notify("reloading", f"upgrading to generation {number}"),
                act.Record({"in_progress": True}),
            )
        else:
            self._emit(act.info("starting %s (%s)", gen, self._reason))

    def _spawn_failed(self, now: float, number: int, why: str) -> None:
        if self.pending is None or self.pending.number != number:
            return
        self.pending = None
        self._emit(act.error("cannot start generation %d: %s", number, why))
        self._schedule_restart(now)

    def _ready(self, now: float, number: int) -> None:
        gen = self.pending
        if gen is None or gen.number != number:
            return
        gen.ready_at = now
        old, self.current, self.pending = self.current, gen, None
        elapsed_ms = (now - gen.started) * 1000
        if old is None:
            self._emit(
                act.info(
                    "%s ready after %d ms; serving %s. Upgrade: kill -HUP %d. Stop: kill -TERM %d.",
                    gen,
                    elapsed_ms,
                    ", ".join(self.listeners),
                    self.pid,
                    self.pid,
                )
            )
        else:
            self._emit(act.info("%s ready after %d ms; %s drains", gen, elapsed_ms, old))
            self._retire(now, old)
        self._emit(
            act.Serving(
                f"serving with generation {gen.number} (pid {gen.pid})",
                outcome=None if old is None else "ok",
                detail=f"{gen} ready after {elapsed_ms:.0f} ms",
                fields={"ready_ms": round(elapsed_ms)},
                number=gen.number,
                pid=gen.pid,
            )
        )
        self._maybe_followup(now)

    def _retire(self, now: float, gen: Gen) -> None:
        """Drain *gen* to its own deadline; past ``max_draining``, cut the oldest short."""
        gen.drain_deadline = now + self.options.drain_timeout
        gen.deadline = gen.drain_deadline + KILL_GRACE
        self.draining.append(gen)
        self._emit(act.Drain(gen.number))
        uncut = [g for g in self.draining if not g.cut]
        if len(uncut) > self.options.max_draining:
            self._cut(now, uncut[0], len(uncut))
        self._record_draining()

    def _cut(self, now: float, gen: Gen, count: int) -> None:
        gen.cut = True
        gen.drain_deadline = now
        gen.deadline = min(gen.deadline, now + KILL_GRACE)
        self._emit(
            act.warning(
                "%s drain cut short: %d generations draining, more than max_draining=%d;"
                " what it still holds is closed now",
                gen,
                count,
                self.options.max_draining,
            ),
            act.Drain(gen.number),  # a second drain order: the deadline is now
        )

    def _record_draining(self) -> None:
        self._emit(
            act.RecordDraining(
                tuple(
                    act.Draining(g.number, g.pid, g.drain_deadline or g.deadline, g.cut, g.left)
                    for g in self.draining
                )
            )
        )

    def _left(self, number: int, count: int) -> None:
        """A draining generation said how many connections it holds: record a change."""
        gen = next((g for g in self.draining if g.number == number), None)
        if gen is not None and gen.left != count:
            gen.left = count
            self._record_draining()

    def _rollback(self, now: float, gen: Gen, why: str) -> None:
        self._emit(act.Kill(gen.number, wait=True), act.Forget(gen.number))
        self.pending = None
        if self.stopping:
            return
        if self.current is not None:
            self._emit(
                act.error(
                    "upgrade rolled back: %s %s; %s keeps serving (its traceback, if any, is"
                    " above)",
                    gen,
                    why,
                    self.current,
                ),
                act.Serving(
                    f"upgrade rolled back: generation {gen.number} {why}",
                    outcome="rolled_back",
                    detail=f"{gen} {why}",
                ),
            )
        elif self.counter == 1:
            self._emit(
                act.error(
                    "the app failed to start: %s %s (its traceback, if any, is above)", gen, why
                )
            )
            self.exit_code = ExitCode.APP_LOAD_ERROR
            self.stop(now, "start-up failed")
            return
        else:
            self._emit(act.error("restart failed: %s %s", gen, why))
            self._schedule_restart(now)
        self._maybe_followup(now)

    def _exited(self, now: float, number: int, returncode: int) -> None:
        gen = self.find(number)
        if gen is None:
            return
        status = describe_status(returncode)
        if gen is self.pending:
            self._rollback(now, gen, f"exited ({status}) before it was ready")
        elif gen is self.current:
            self._emit(act.Forget(number))
            self.current = None
            if self.stopping:
                return
            self.pace.died_after(now - (gen.ready_at or gen.started))
            self._emit(act.error("%s exited unexpectedly (%s)", gen, status))
            if self.pending is None:
                self._schedule_restart(now)
        else:
            self._emit(act.Forget(number))
            self.draining.remove(gen)
            self._emit(act.info("%s exited after draining (%s)", gen, status))
            self._record_draining()
            self._maybe_followup(now)

    # -- supplied by Rules ------------------------------------------------------------------------
    def _maybe_followup(self, now: float) -> None:
        raise NotImplementedError

    def _schedule_restart(self, now: float) -> None:
        raise NotImplementedError

    def stop(self, now: float, reason: str) -> None:
        raise NotImplementedError
