"""The worker class behind ``gunicorn -k grace_plugins.Worker`` (see docs/gunicorn.md).

A SIGTERM is only recorded; the loop decides with the gate's verdicts. If a newer generation
exists, the SIGTERM is the reload's: this worker keeps serving until that generation is promoted
(then it drains) or rolled back (then it forgets the SIGTERM). A worker also watches its own
generation until it has a verdict, and drains if it was rolled back (all or nothing).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Any

from grace_plugins.gunicorn.boot import BootingWorker, ready_path
from grace_plugins.gunicorn.gate import (
    DRAIN,
    FORGET,
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    Member,
    Verdict,
    on_pending_term,
    pid_list,
)
from grace_plugins.gunicorn.master import MASTER, record_verdict, retire_previous_master
from grace_plugins.gunicorn.serve import POLL


def _noop() -> None:
    pass


def _ignore_signal(sig: int, frame: Any) -> None:
    pass


class Worker(BootingWorker):
    """A gthread worker with connection tracking, drains and a readiness-gated reload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # runs in the master, before the fork
        self.generation, self.gate = MASTER.generation_for(self.cfg, self.log, self._age)
        self.member = Member(self.generation, self._age, 0)
        self._term_pending = False
        self._last_term = 0.0
        self._watch_own = True
        self._next_check = 0.0

    @property
    def age(self) -> float:
        """gunicorn's spawn counter; as the master sees it, workers that outlived a rolled-back
        generation count as younger than it (a query: see ``MasterBook.age_of``)."""
        if os.getpid() != self.ppid:
            return self._age
        return MASTER.age_of(self._age, getattr(self, "generation", 0), getattr(self, "gate", None))

    @age.setter
    def age(self, value: int) -> None:
        self._age = value

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        ready_path({**os.environ, **cfg.env})  # a bad GRACE_READY_PATH: one line at start
        if cfg.reuse_port:
            raise RuntimeError(
                "grace_plugins.Worker does not support --reuse-port: every worker would own a"
                " listening socket, and the connections queued on a draining worker's socket"
                " would be reset. Drop --reuse-port (the workers share one listener)."
            )

    # -- signals ----------------------------------------------------------------------------------
    def init_signals(self) -> None:
        super().init_signals()
        # HUP is the master's (reload). A hang-up sent to the whole process group (a closed
        # terminal, ``kill -HUP -PGID``) must not kill the workers with their requests in
        # flight. A handler, not SIG_IGN: an ignored signal would stay ignored in programs the
        # app runs.
        signal.signal(signal.SIGHUP, _ignore_signal)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: only record it; the loop decides (drain now, or after the new generation)."""
        if not self.alive:
            return  # already stopping (the master re-sends SIGTERM to surplus workers)
        self._term_pending = True
        self._last_term = time.time()  # wall clock, compared with the verdict file's mtime
        if self.member.pid and self.gate.newest_generation() <= self.generation:
            self.gate.record(self.member, "stopping")  # a plain stop: tells gated older workers
        self.method_queue.defer(_noop)

    # -- serving ----------------------------------------------------------------------------------
    def run(self) -> None:
        self._ready_check()  # before accepting: code that fails it never takes traffic
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        self.set_accept_enabled(True)
        self._became_ready()
        while self.alive:
            self.notify()
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            watching = self._term_pending or self._watch_own
            self.wait_for_and_dispatch_events(timeout=POLL if watching else 1.0)
            if not self.is_parent_alive():
                self._stop_reason = "the master is gone"
                break
            self._murder_idle()
            self._tick()
        self._settled.set()
        self._drain()

    def _became_ready(self) -> None:
        self._settled.set()
        self.gate.record(self.member, "ready")
        self.log.info(
            "grace_plugins: worker %s (generation %s) ready after %d ms",
            self.member.pid,
            self.generation,
            (time.monotonic() - self._boot_start) * 1000,
        )
        self._check_own()

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + POLL
        if self._watch_own:
            self._check_own()
        if self._term_pending and self.alive:
            self._decide_term()

    def _settle(self, gen: int) -> Verdict:
        """The verdict on *gen*; a new one is published, and logged by the one worker that
        published it (another worker may have published first: then its verdict)."""
        verdict = self.gate.status(gen)
        if not verdict.new:
            return verdict
        if self.gate.publish(gen, verdict):
            self._log_verdict(gen, verdict.status, verdict.reason)
            if verdict.status == PROMOTED and gen == 1:
                retire_previous_master(self.ppid, self.log)
            return verdict
        return self.gate.status(gen)

    def _check_own(self) -> None:
        """Watch this worker's own generation until it has a verdict."""
        status = self._settle(self.generation).status
        if status == PENDING:
            return
        self._watch_own = False
        if status == ROLLED_BACK and self._is_member() and self.alive:
            # All or nothing: a generation some of whose workers failed is not trusted.
            self._begin_stop(f"generation {self.generation} was rolled back")

    def _decide_term(self) -> None:
        """A SIGTERM is pending: drain now, keep waiting, or (after a rollback) forget it
        (the rules: :func:`~grace_plugins.gunicorn.gate.on_pending_term`)."""
        newest = self.gate.newest_generation()
        later = {gen: self._settle(gen).status for gen in range(self.generation + 1, newest + 1)}
        rolled_back = later.get(newest) == ROLLED_BACK
        rolled_back_at = self.gate.resolution_time(newest) if rolled_back else None
        action, why = on_pending_term(self.generation, later, self._last_term, rolled_back_at)
        if action == DRAIN:
            self._begin_stop(why)
        elif action == FORGET:
            self._term_pending = False
            self.log.info(
                "grace_plugins: worker %s (generation %s) keeps serving: generation %s was"
                " rolled back",
                self.member.pid,
                self.generation,
                newest,
            )

    def _begin_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.alive = False

    def _log_verdict(self, gen: int, status: str, why: str) -> None:
        """Log the verdict on *gen* and record it for ``grace-plugins reload``; called once,
        by the worker that decided it. Under systemd the master records it instead, after
        ``READY=1`` (see ``MasterBook.step``)."""
        if not MASTER.systemd.active:
            record_verdict(self.ppid, self.gate, gen, status, why)
        if status == PROMOTED:
            members = self.gate.members(gen)
            self.log.info(
                "grace_plugins: generation %s ready: %s workers serving (pids %s)%s",
                gen,
                len(members),
                pid_list(members),
                "; the previous workers drain" if gen > 1 else "",
            )
        elif status == ROLLED_BACK and gen > 1:
            self.log.error(
                "grace_plugins: generation %s rolled back (%s); the previous workers keep serving",
                gen,
                why,
            )
        elif status == ROLLED_BACK:
            self.log.warning("grace_plugins: generation %s started incomplete (%s)", gen, why)
