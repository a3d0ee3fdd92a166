"""The supervisor's decisions, as a pure state machine: events in, actions out.

:class:`Rules` knows generations by number and pid only; it starts no process, reads no clock
(every event carries ``now``) and writes nothing. The loop in :mod:`grace_plugins.supervisor`
feeds it events and carries out what it returns. The rules:

* one *pending* (starting) generation at a time, with a ready deadline; a trigger while one
  starts, or sooner than ``upgrade_interval`` after the last upgrade began, is coalesced into
  one follow-up;
* an upgrade never waits for older generations to drain: several drain side by side, each to
  its own deadline; past ``max_draining`` the oldest is cut short (its deadline is now);
* a pending generation that exits or misses its deadline is killed, and the current one serves
  on (rollback); a current generation that dies is restarted with back-off;
* TERM/INT drains everything, then the loop ends; a second one kills at once;
* USR2 (re-exec) waits until nothing starts or drains.
"""

from __future__ import annotations

import signal

from grace_plugins import actions as act
from grace_plugins.actions import Action, Event
from grace_plugins.errors import ExitCode
from grace_plugins.lifecycle import KILL_GRACE, Gen, Lifecycle
from grace_plugins.pacing import BACKOFF, STABLE_AFTER

__all__ = ["BACKOFF", "KILL_GRACE", "STABLE_AFTER", "Gen", "Rules"]


class Rules(Lifecycle):
    """The supervisor's rules. :meth:`handle` returns the actions an event calls for."""

    @property
    def finished(self) -> bool:
        """The loop is over: stopped with nothing left, or the first start failed."""
        if self.exit_code != ExitCode.OK and not (self.current or self.pending):
            return True
        return self.stopping and not (self.current or self.pending or self.draining)

    def timeout(self, now: float) -> float:
        """Seconds until the next deadline (at most 1 s: a safety net for a missed SIGCHLD)."""
        moments = [g.deadline for g in [self.pending, *self.draining] if g is not None]
        moments += self.pace.moments()
        if self.stop_deadline is not None:
            moments.append(self.stop_deadline)
        if not moments:
            return 1.0
        return max(0.0, min(min(moments) - now, 1.0))

    def handle(self, event: Event) -> list[Action]:
        """Apply *event*; return what to do, in order."""
        self._out = []
        now = event.now
        if isinstance(event, act.Begin):
            self._begin(now)
        elif isinstance(event, act.SignalEvent):
            self._signal(now, event.signum)
        elif isinstance(event, act.UpgradeAsked):
            gen = self.find(event.number)
            self.request_upgrade(now, f"requested by {gen or f'generation {event.number}'}")
        elif isinstance(event, act.Ready):
            self._ready(now, event.number)
        elif isinstance(event, act.ConnectionsLeft):
            self._left(event.number, event.count)
        elif isinstance(event, act.ChannelClosed):
            self._out.append(act.Unwatch(event.number))
        elif isinstance(event, act.Exited):
            self._exited(now, event.number, event.returncode)
        elif isinstance(event, act.Spawned):
            self._spawned(event.number, event.pid)
        elif isinstance(event, act.SpawnFailed):
            self._spawn_failed(now, event.number, event.error)
        elif isinstance(event, act.ReexecRefused):
            self._out.append(
                act.error(
                    "re-exec refused: the new program failed: %s; serving on unchanged", event.why
                )
            )
        elif isinstance(event, act.Tick):
            self._tick(now)
        return self._out

    def _begin(self, now: float) -> None:
        if self.adopted and self.current is not None:
            gen = self.current
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
            self.reexec_requested = True
            if self.pending or self.draining or self.current is None:
                self._emit(act.info("re-exec (SIGUSR2) deferred until the upgrade under way ends"))
            self._maybe_reexec()

    def request_upgrade(self, now: float, reason: str) -> None:
        """Start an upgrade now, or coalesce it into one follow-up. Drains never hold it."""
        if self.stopping:
            self._emit(act.info("upgrade (%s) ignored: stopping", reason))
            return
        interval = self.options.upgrade_interval
        if self.pending or (self.pace.too_soon(now) and self.current):
            if self.pace.queue():
                if self.pending is not None:
                    state = f"{self.pending} is still starting"
                else:
                    state = f"the last upgrade started less than {interval:g} s ago"
                self._emit(
                    act.info(
                        "upgrade (%s) queued: %s; one follow-up upgrade will run", reason, state
                    )
                )
            self._maybe_followup(now)
            return
        if self.current is None:
            self.pace.restart_at = None  # a HUP while waiting to restart: try now
        self._start(now, reason)

    def _maybe_reexec(self) -> None:
        """Re-exec (USR2) once nothing starts or drains: the new image adopts one generation."""
        if not self.reexec_requested or self.stopping:
            return
        if self.pending or self.draining or self.current is None:
            return
        self.reexec_requested = False
        self._emit(
            act.info("re-exec (SIGUSR2): checking that the new program starts"), act.Reexec()
        )

    def _maybe_followup(self, now: float) -> None:
        """Start the coalesced follow-up once nothing starts and the interval passed (however
        many generations drain)."""
        self._maybe_reexec()
        busy = self.pending is not None or self.stopping
        if self.pace.followup_due(now, busy):
            self._start(now, "queued follow-up")

    def _schedule_restart(self, now: float) -> None:
        if self.stopping:
            return
        delay = self.pace.back_off(now)
        self._emit(act.info("next start attempt in %.1f s (or at the next SIGHUP)", delay))

    def _tick(self, now: float) -> None:
        if self.pending and now >= self.pending.deadline:
            why = f"was not ready within {self.options.ready_timeout:g} s"
            self._rollback(now, self.pending, why)
        for gen in list(self.draining):
            if now >= gen.deadline:
                self._emit(
                    act.error("%s still running after its drain deadline: killed", gen),
                    act.Kill(gen.number),
                )
                gen.deadline = now + 1.0
        if self.pace.followup_at is not None and now >= self.pace.followup_at:
            self._maybe_followup(now)
        restart = self.pace.restart_due(now)  # no longer due, whether or not it starts
        if restart and self.current is None and self.pending is None and not self.stopping:
            self._start(now, "restart")
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for one in [self.current, self.pending, *self.draining]:
                if one is not None:
                    self._emit(act.Kill(one.number))
            self.stop_deadline = now + 1.0

    def stop(self, now: float, reason: str) -> None:
        """Graceful stop: drain every generation, then the loop ends. A second stop signal
        kills at once (as in gunicorn's quick shutdown)."""
        if self.stopping:
            if reason in ("SIGINT", "SIGTERM"):
                self._emit(act.info("%s again: stopping now", reason))
                self.stop_deadline = now
            return
        self.stopping = True
        self.pace.cancel()
        self._emit(act.info("stopping (%s): draining", reason), act.Notify("stopping"))
        if self.pending is not None:
            self._emit(act.Kill(self.pending.number))
        if self.current is not None:
            self._retire(now, self.current)
            self.current = None
        self.stop_deadline = now + self.options.drain_timeout + KILL_GRACE
