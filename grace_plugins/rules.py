"""The supervisor's decisions, as a pure state machine: events in, actions out.

:class:`Rules` knows generations by number and pid only; it starts no process, reads no clock
(every event carries ``now``) and writes nothing. The loop in :mod:`grace_plugins.supervisor`
feeds it events and carries out what it returns; an action's outcome comes back as a later
event, never as a call into the rules. The rules:

* one *pending* (starting) generation at a time, with a ready deadline; a trigger while one
  starts, or sooner than ``upgrade_interval`` after the last upgrade began, is coalesced into
  one follow-up;
* an upgrade never waits for older generations to drain: several drain side by side, each to
  its own deadline; past ``max_draining`` the oldest is cut short (its deadline is now);
* a pending generation forked warm that fails before it is ready is started again cold (the
  warm-start template may be at fault, not the code); one that fails cold, or misses its
  deadline, is killed and the current one serves on (rollback); a current generation that
  dies is restarted with back-off;
* an upgrade's outcome (what ``grace-plugins reload`` returns on) is recorded once the old
  generation says it stopped accepting (:mod:`grace_plugins.outcome_hold`);
* TERM/INT drains everything, then the loop ends; a second one kills at once;
* USR2 first runs the new program once in the background (preflight), then re-executes the
  supervisor in place once nothing starts or drains.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from grace_plugins import actions as act
from grace_plugins import news
from grace_plugins.actions import Action, Event
from grace_plugins.errors import ExitCode
from grace_plugins.generations import KILL_GRACE, Gen, Generations
from grace_plugins.options import Options
from grace_plugins.outcome_hold import OutcomeHold
from grace_plugins.pacing import BACKOFF, STABLE_AFTER, Pacing, describe_status
from grace_plugins.reexec_rules import ReexecRules
from grace_plugins.watch_rules import WatchRules

__all__ = ["BACKOFF", "KILL_GRACE", "STABLE_AFTER", "Gen", "Rules"]


class Rules:
    """The supervisor's rules. :meth:`handle` returns the actions an event calls for."""

    def __init__(self, options: Options, listeners: list[str], pid: int) -> None:
        self.options = options
        self.listeners = listeners
        self.pid = pid  # the supervisor's, for the start-up line
        self.gens = Generations(options)
        self.pace = Pacing(options.upgrade_interval)
        self.stopping = False
        self.stop_deadline: float | None = None
        self.exit_code: int = ExitCode.OK
        self.served = False  # some generation was ever ready (else a failed start is quiet)
        self.adopted = False
        self.reexec = ReexecRules(options.ready_timeout)
        self.watched = WatchRules()
        self.outcome = OutcomeHold()
        self._reason = ""  # why the pending generation starts, for its log line
        self._out: list[Action] = []

    # -- what the loop reads ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The loop is over: stopped with nothing left, or the first start failed."""
        if self.exit_code != ExitCode.OK and not (self.gens.current or self.gens.pending):
            return True
        return self.stopping and not self.gens.all()

    def timeout(self, now: float) -> float:
        """Seconds until the next deadline (at most 1 s: a safety net for a missed SIGCHLD)."""
        moments = [g.deadline for g in self.gens.all() if g is not self.gens.current]
        moments += self.pace.moments()
        held = (self.stop_deadline, self.reexec.deadline, self.outcome.deadline)
        moments += [m for m in held if m is not None]
        if not moments:
            return 1.0
        return max(0.0, min(min(moments) - now, 1.0))

    def adopt(self, number: int, pid: int, counter: int, now: float) -> None:
        """Take over the generation a previous image of this supervisor ran (after USR2)."""
        self.gens.adopt(number, pid, counter, now)
        self.adopted = True

    # -- events ----------------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Action]:
        """Apply *event*; return what to do, in order (see :data:`_ROUTES`)."""
        self._out = []
        _ROUTES[type(event)](self, event)
        return self._out

    def _asked(self, event: act.UpgradeAsked) -> None:
        gen = self.gens.find(event.number)
        self.request_upgrade(event.now, f"requested by {gen or f'generation {event.number}'}")

    def _emit(self, *actions: Action) -> None:
        self._out.extend(actions)

    def _begin(self, now: float) -> None:
        gen = self.gens.current
        if self.adopted and gen is not None:
            self._emit(
                act.info("supervisor re-executed (pid unchanged); adopted %s; upgrading it", gen),
                act.Record({"generation": gen.number, "generation_pid": gen.pid}),
            )
            self.request_upgrade(now, "supervisor re-exec")
        else:
            self._start(now, "start")

    def _signal(self, now: float, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.request_upgrade(now, "SIGHUP")
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(now, signal.Signals(signum).name)
        elif signum == signal.SIGUSR2:
            self._emit(*self.reexec.requested(now, self.stopping))

    # -- upgrades --------------------------------------------------------------------------------
    def _files_changed(self, event: act.FilesChanged) -> None:
        self.request_upgrade(event.now, news.changed(event.paths), saved_at=event.first)

    def request_upgrade(self, now: float, reason: str, saved_at: float | None = None) -> None:
        """Start an upgrade now, or coalesce it into one follow-up. Drains never hold it."""
        if self.stopping:
            self._emit(act.info("upgrade (%s) ignored: stopping", reason))
            return
        if self.gens.pending or (self.pace.too_soon(now) and self.gens.current):
            if self.pace.queue():
                self._emit(*news.queued(reason, self.gens.pending, self.options.upgrade_interval))
            self._maybe_followup(now)
            return
        if self.gens.current is None:
            self.pace.restart_at = None  # a HUP while waiting to restart: try now
        self._start(now, reason)
        if self.gens.pending is not None:
            self.gens.pending.saved_at = saved_at

    def _start(self, now: float, reason: str) -> None:
        self._emit(*self.outcome.release())  # before this upgrade is recorded as in progress
        gen = self.gens.start(now)  # pending from now on: nothing else may start meanwhile
        self._reason = reason
        self._emit(act.Spawn(gen.number))

    def _spawned(self, event: act.Spawned) -> None:
        gen = self.gens.pending
        if gen is None or gen.number != event.number:
            # given up meanwhile (stopped, rolled back): it must not serve unwatched
            self._emit(act.Kill(event.number, wait=True), act.Forget(event.number))
            return
        gen.pid, gen.warm = event.pid, event.warm
        upgrading = self.gens.current is not None
        if upgrading and not gen.cold_retry:  # the interval paces upgrades, not (re)starts
            self.pace.upgrade_started = gen.started
        self._emit(*news.started(gen, self._reason, upgrading))

    def _spawn_failed(self, now: float, number: int, why: str) -> None:
        gen = self.gens.pending
        if gen is None or gen.number != number:
            return
        if self.gens.current is not None:  # an upgrade: it has an outcome, as any rollback
            self._rollback(now, gen, f"could not be started ({why})", None)
            return
        self.gens.pending = None
        self._emit(act.error("cannot start generation %d: %s", number, why))
        self._schedule_restart(now)

    def _ready(self, now: float, number: int) -> None:
        gen = self.gens.pending
        if gen is None or gen.number != number or self.stopping:
            return  # a generation killed by a stop or a rollback may still have said it
        old = self.gens.promote(gen, now)
        self.served = True
        elapsed_ms = (now - gen.started) * 1000
        retired = self.gens.retire(old, now) if old is not None else []
        # the old generation is told to drain (to stop accepting), and the outcome waits until
        # it did: ``grace-plugins reload`` returns on the outcome, and a smoke test right after
        # must meet the new code
        self._emit(*[a for a in retired if isinstance(a, act.Drain)])
        line, *outcome = news.ready(gen, old, elapsed_ms, ", ".join(self.listeners), self.pid)
        self._emit(line, *self.outcome.hold(outcome, old.number if old else None, now))
        self._emit(*[a for a in retired if not isinstance(a, act.Drain)])
        if gen.cold_retry:
            self._emit(*news.template_at_fault(gen))
        self._emit(act.Refresh())
        self._maybe_followup(now)

    def _failed(self, now: float, gen: Gen, why: str, status: int | None = None) -> None:
        """The pending generation failed before it was ready: if it was forked warm, the
        template may be at fault: start it again cold; else roll back."""
        if gen.warm and not self.stopping:
            self._emit(act.Kill(gen.number, wait=True), act.Forget(gen.number))
            self._emit(*news.retrying_cold(gen, why))
            self._emit(act.Spawn(self.gens.restart_cold(gen, now).number, cold=True))
            return
        why = f"{why} (so did its warm start)" if gen.cold_retry else why
        self._rollback(now, gen, why, status)

    def _rollback(self, now: float, gen: Gen, why: str, status: int | None) -> None:
        self._emit(act.Kill(gen.number, wait=True), act.Forget(gen.number))
        self.gens.pending = None
        if self.stopping:
            return
        if self.gens.current is not None:
            self._emit(*news.rolled_back(gen, why, self.gens.current))
        elif not self.served:
            # As the framework's own command would: exit with the program's status (nothing
            # is serving, so nothing drains: no more lines).
            self._emit(*news.start_failed(gen, why))
            self.exit_code = status if status and status > 0 else ExitCode.APP_LOAD_ERROR
            self.stopping = True
            self.pace.cancel()
            self._emit(*self.reexec.stop())
            return
        else:
            self._emit(act.error("restart failed: %s %s", gen, why))
            self._schedule_restart(now)
        self._maybe_followup(now)

    def _exited(self, now: float, number: int, returncode: int) -> None:
        self._emit(*self.outcome.stopped(number))
        gen = self.gens.find(number)
        if gen is None:
            return
        status = describe_status(returncode)
        if gen is self.gens.pending:
            self._failed(now, gen, f"exited ({status}) before it was ready", returncode)
        elif gen is self.gens.current:
            self._emit(act.Forget(number))
            self.gens.current = None
            if self.stopping:
                return
            self.pace.died_after(now - (gen.ready_at or gen.started))
            self._emit(act.error("%s exited unexpectedly (%s)", gen, status))
            if self.gens.pending is None:
                self._schedule_restart(now)
        else:
            self._emit(act.info("%s exited after draining (%s)", gen, status))
            self._emit(*self.gens.drained(gen))
            self._maybe_followup(now)

    def _maybe_followup(self, now: float) -> None:
        """Start the coalesced follow-up once nothing starts and the interval passed (however
        many generations drain); re-exec once nothing starts or drains."""
        self._emit(*self.reexec.when_quiet(self._alone, self.gens.counter))
        busy = self.gens.pending is not None or self.stopping
        if self.pace.followup_due(now, busy):
            self._start(now, "queued follow-up")

    def _schedule_restart(self, now: float) -> None:
        if self.stopping:
            return
        delay = self.pace.back_off(now)
        self._emit(act.info("next start attempt in %.1f s (or at the next SIGHUP)", delay))

    def _tick(self, now: float) -> None:
        pending = self.gens.pending
        if pending and now >= pending.deadline:
            limit = self.options.ready_timeout
            self._failed(now, pending, f"was not ready within {limit:g} s")
        self._emit(*self.outcome.tick(now))
        self._emit(*self.gens.overdue_drains(now))
        if self.pace.followup_at is not None and now >= self.pace.followup_at:
            self._maybe_followup(now)
        restart = self.pace.restart_due(now)  # no longer due, whether or not it starts
        if restart and not (self.gens.current or self.gens.pending or self.stopping):
            self._start(now, "restart")
        self._emit(*self.reexec.tick(now))
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self._emit(*(act.Kill(gen.number) for gen in self.gens.all()))
            self.stop_deadline = now + 1.0

    def stop(self, now: float, reason: str) -> None:
        """Graceful stop: drain every generation, then the loop ends. A second stop signal
        kills at once (as in gunicorn's quick shutdown)."""
        if self.stopping:
            if reason in ("SIGINT", "SIGTERM"):
                self._emit(act.info("%s again: stopping now", reason))
                self.stop_deadline = now
            return
        self._emit(*self.outcome.release())  # the upgrade did end: its outcome stands
        self.stopping = True
        self.pace.cancel()
        self._emit(act.info("stopping (%s): draining", reason), act.Notify("stopping"))
        self._emit(*self.reexec.stop(), *self.gens.stop(now))
        self.stop_deadline = now + self.options.drain_timeout + KILL_GRACE

    @property
    def _alone(self) -> Gen | None:
        """The serving generation, if nothing else starts or drains (a re-exec adopts it)."""
        return self.gens.current if self.gens.quiet and not self.stopping else None


#: Where each event goes: the one dispatch of the rules.
_ROUTES: dict[type, Callable[[Rules, Any], None]] = {
    act.Begin: lambda r, e: r._begin(e.now),
    act.SignalEvent: lambda r, e: r._signal(e.now, e.signum),
    act.UpgradeAsked: Rules._asked,
    act.FilesChanged: Rules._files_changed,
    act.Ready: lambda r, e: r._ready(e.now, e.number),
    act.WatchReport: lambda r, e: r._emit(*r.watched.report(e, r.gens)),
    act.ConnectionsLeft: lambda r, e: r._emit(*r.gens.left(e.number, e.count)),
    act.StoppedAccepting: lambda r, e: r._emit(*r.outcome.stopped(e.number)),
    act.ChannelClosed: lambda r, e: r._emit(act.Unwatch(e.number), *r.outcome.stopped(e.number)),
    act.Exited: lambda r, e: r._exited(e.now, e.number, e.returncode),
    act.Spawned: Rules._spawned,
    act.SpawnFailed: lambda r, e: r._spawn_failed(e.now, e.number, e.error),
    act.PreflightDone: lambda r, e: r._emit(
        *r.reexec.preflight_done(e.why, r._alone, r.gens.counter)
    ),
    act.ReexecRefused: lambda r, e: r._emit(
        act.error("re-exec refused: %s; serving on unchanged", e.why)
    ),
    act.Tick: lambda r, e: r._tick(e.now),
}
