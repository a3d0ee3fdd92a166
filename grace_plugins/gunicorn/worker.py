"""The worker class behind ``gunicorn -k grace_plugins.Worker`` (see docs/gunicorn.md).

It is gunicorn's threaded worker with a drain (:class:`~grace_plugins.gunicorn.serve.
DrainingWorker`), and it puts together the parts that each own their state: the boot
(:class:`~grace_plugins.gunicorn.boot.Boot`) and the watch over the verdicts
(:class:`~grace_plugins.gunicorn.watch.Watch`). A SIGTERM is only recorded; the loop asks the
watch what it means: if a newer generation exists, the SIGTERM is the reload's and this worker
keeps serving until that generation is promoted (then it drains) or rolled back (then it
forgets the SIGTERM). A worker also watches its own generation until it has a verdict, and
drains if it was rolled back (all or nothing).
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
from typing import Any

from grace_plugins.channel import parse_watch
from grace_plugins.errors import GraceError
from grace_plugins.gunicorn.boot import Boot, ready_path
from grace_plugins.gunicorn.held_term import DRAIN, FORGET, look_interval
from grace_plugins.gunicorn.master import MASTER
from grace_plugins.gunicorn.max_requests import MaxRequests
from grace_plugins.gunicorn.mold_rules import MOLDS_VAR, molds_wanted
from grace_plugins.gunicorn.mold_worker import disowned
from grace_plugins.gunicorn.molds import take_over_preload
from grace_plugins.gunicorn.records import STOPPED, RecordStore
from grace_plugins.gunicorn.release import stay_in_this_release
from grace_plugins.gunicorn.serve import POLL, DrainingWorker
from grace_plugins.gunicorn.verdicts import Member
from grace_plugins.gunicorn.watch import Watch
from grace_plugins.gunicorn.watchlist import serving_spec
from grace_plugins.handoff import check_systemd_fds
from grace_plugins.watch_report import WatchReporter
from grace_plugins.watchspec import is_glob


def _noop() -> None:
    pass


def _ignore_signal(sig: int, frame: Any) -> None:
    pass


class Worker(DrainingWorker):
    """A gthread worker with connection tracking, drains and a readiness-gated reload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # runs in the master, before the fork
        self.generation, self.store = MASTER.generation_for(
            self.cfg, self.log, self._age, self.sockets
        )
        self._term_pending = False
        self.at_max_requests = MaxRequests()
        self._last_term = 0.0  # wall clock, compared with the verdict file's mtime
        self._term_at = 0.0  # monotonic, the first held SIGTERM: the 10 ms checks count from it
        self._next_look = 0.0
        #: when this worker's code began loading (``time.time()``): saves since then count
        self.loading_since = time.time()
        # made in the worker (init_process), once its pid is known
        self.watch: Watch | None = None
        self.boot: Boot | None = None
        self.reporter: WatchReporter | None = None

    @property
    def age(self) -> float:
        """gunicorn's spawn counter; as the master sees it, workers that outlived a rolled-back
        generation count as younger than it (a query: see ``MasterBook.age_of``)."""
        if os.getpid() != self.ppid:
            return self._age
        store: RecordStore | None = getattr(self, "store", None)
        return MASTER.age_of(self._age, getattr(self, "generation", 0), store)

    @age.setter
    def age(self, value: int) -> None:
        self._age = value

    @classmethod
    def setup(cls) -> None:
        """Runs in the master each time gunicorn loads a config (the start, every HUP), just
        before gunicorn would import the app for ``--preload``: the molds take that over (the
        master never imports the app; see molds.py). Before the master's start, it also checks
        systemd's sockets: gunicorn adopts them next, and would fail from deep inside."""
        try:
            check_systemd_fds(os.environ)
        except GraceError as exc:
            raise RuntimeError(str(exc)) from None  # gunicorn says "Error: ..." and exits 1
        take_over_preload(sys._getframe(1))

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        environ = {**os.environ, **cfg.env}
        ready_path(environ)  # a bad GRACE_READY_PATH: one line at start
        try:
            molds_wanted(environ.get(MOLDS_VAR))
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        if cfg.reuse_port:
            raise RuntimeError(
                "grace_plugins.Worker does not support --reuse-port: every worker would own a"
                " listening socket, and the connections queued on a draining worker's socket"
                " would be reset. Drop --reuse-port (the workers share one listener)."
            )

    # -- boot -------------------------------------------------------------------------------------
    def init_process(self) -> None:
        member = Member(self.generation, self._age, os.getpid())
        self.watch = Watch(self.store, member, self.log)
        stillborn = self.watch.stillborn()
        if stillborn:
            self.log.info(
                "grace_plugins: worker %s (generation %s) exits without loading the app: %s",
                member.pid,
                member.gen,
                stillborn,
            )
            sys.exit(0)
        self.reporter = self._reporter(member)
        self.boot = Boot(
            self.store,
            member,
            self.watch,
            self.cfg,
            self.log,
            self.sockets,
            heartbeat=self.notify,
            stop_waiting=lambda: self._term_pending,
            reporter=self.reporter,
        )
        self.boot.start()
        try:
            super().init_process()  # imports the app (load_wsgi), then run()
        except SystemExit:
            raise
        except Exception as exc:
            if self.booted or not self.boot.something_serves():
                raise  # nothing else serves: gunicorn's own handling (the master halts)
            self.boot.failed(exc)

    def _reporter(self, member: Member) -> WatchReporter | None:
        """With ``--reload``: what this worker loads goes to the master's file watcher, and
        gunicorn's own reloader (a thread in each worker that restarts it on a save: a broken
        save would take the site down) is off in this process."""
        if not self.cfg.reload:
            return None
        self.cfg.set("reload", False)
        extra = list(self.cfg.reload_extra_files or ())

        def send(line: str) -> None:
            self.store.record_spec(member.gen, member.pid, parse_watch(line) or "")

        return WatchReporter(
            send,
            lambda since: serving_spec(extra, since),
            self.loading_since,
            extra_files=[name for name in extra if not is_glob(name)],
        )

    def load_wsgi(self) -> None:
        assert self.boot is not None
        stay_in_this_release(self.cfg.chdir)
        # gunicorn's handle_quit (SIGINT, SIGQUIT: the master's quick stop) clears ``alive``
        self.boot.load(super().load_wsgi, quitting=lambda: not self.alive)

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
        if not self._term_pending:  # gunicorn re-sends it to surplus workers: the first counts
            self._term_at = time.monotonic()
        self._term_pending = True
        self._last_term = time.time()
        self._next_look = 0.0  # at once: which generation it waits for, then one stat a loop
        self.method_queue.defer(_noop)

    # -- serving ----------------------------------------------------------------------------------
    def run(self) -> None:
        assert self.boot is not None and self.watch is not None
        self.boot.check(self.wsgi, self.sockets[0], self.cfg.is_ssl)  # before accepting
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        self.set_accept_enabled(True)
        self.boot.ready()
        if self.reporter is not None:
            self.reporter.start()
        self._look_at_verdicts()
        while self.alive:
            self.notify()
            self.pace_accepting()
            watching = self._term_pending or not self.watch.own_decided
            self.wait_for_and_dispatch_events(timeout=self._wait() if watching else 1.0)
            if not self.is_parent_alive():
                self.stop_serving("the master is gone")
                break
            self._murder_idle()
            if self._look_due():
                self._look_at_verdicts()
        if self.reporter is not None:
            self.reporter.stop()  # what this worker loads is no longer what is served
        self.drain(f"worker {self.watch.member.pid} (generation {self.generation})")

    def handle_request(self, req: Any, conn: Any) -> bool:
        if self.nr + 1 >= self.max_requests:  # this request reaches it (gthread then stops)
            self.at_max_requests.judge(self)
        return super().handle_request(req, conn)

    def handle_http2_request(self, req: Any, conn: Any, h2_conn: Any) -> Any:
        """gunicorn 27's HTTP/2 streams count toward ``max_requests`` too."""
        if self.nr + 1 >= self.max_requests:
            self.at_max_requests.judge(self)
        return super().handle_http2_request(req, conn, h2_conn)

    def queue_orphaned(self) -> bool:
        """The master stopping (it closed its listeners) or gone: nobody accepts after us."""
        stopping = self.store is not None and self.store.master_stopping()
        return stopping or not self.is_parent_alive()

    def stopped_accepting(self) -> None:
        """Say so to the master: a reload's outcome waits until the old workers no longer
        accept (``grace-plugins reload`` returns, and a smoke test must meet the new code)."""
        if self.store is not None and self.watch is not None:
            self.store.record(self.watch.member, STOPPED)

    def _look_due(self) -> bool:
        """Time for a full look, or the generation a held SIGTERM waits for has a verdict."""
        assert self.watch is not None
        return time.monotonic() >= self._next_look or self.watch.awaited_decided()

    def _wait(self) -> float:
        held_for = time.monotonic() - self._term_at if self._term_pending else None
        return look_interval(held_for, POLL)

    def _look_at_verdicts(self) -> None:
        """Act on this worker's own generation's verdict, and on a held SIGTERM."""
        assert self.watch is not None
        self._next_look = time.monotonic() + POLL
        why = self.watch.own_generation()
        if disowned(self.tmp):
            why = "the master never took this worker in (its mold did not answer the fork)"
        if why and self.alive:
            self.stop_serving(why)
        if not (self._term_pending and self.alive):
            return
        last_term = self._last_term
        action, why = self.watch.held_term(last_term)
        if action == DRAIN:
            self.stop_serving(why)
        elif action == FORGET:
            # a SIGTERM that came during the look is judged at the next one
            self._term_pending = self._last_term != last_term
            self.log.info(
                "grace_plugins: worker %s (generation %s) keeps serving: generation %s was"
                " rolled back",
                self.watch.member.pid,
                self.generation,
                self.store.newest_generation(),
            )
