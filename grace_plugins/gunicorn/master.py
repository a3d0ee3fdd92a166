"""What runs in the gunicorn master for ``grace_plugins.Worker``, and what the master reads.

Gunicorn builds each worker object in the master before forking it, so this module stays loaded
there. It numbers the generations (each new ``Config``: the start, every HUP), owns the record
directory (handed to the workers' user under ``--user``), records that the master stops before
gunicorn SIGTERMs its workers, tells the master which workers to keep after a rollback
(:meth:`MasterBook.age_of`, a query), and reports each verdict the workers record: to systemd,
to the state file of ``grace-plugins reload/status``, and, for the first generation of a master
started by USR2, to the old master, which it retires (:meth:`MasterBook.step`, called by the
master's lookout thread, :mod:`grace_plugins.gunicorn.lookout`, which also paces the HUPs and
watches the files with ``--reload``). The workers never write outside the record directory:
after ``--user`` they could not.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from grace_plugins.errors import GraceError
from grace_plugins.gunicorn.handover import create_store
from grace_plugins.gunicorn.lookout import Lookout
from grace_plugins.gunicorn.notify import MasterNotifier
from grace_plugins.gunicorn.records import KEEP_GENERATIONS, RecordStore
from grace_plugins.gunicorn.verdicts import (
    PROMOTED,
    ROLLED_BACK,
    Announcement,
    Verdict,
    gone_respawns,
    pid_list,
    serving_workers,
    still_accepting,
)
from grace_plugins.outcome_hold import STOPPED_WAIT
from grace_plugins.process import pid_alive
from grace_plugins.state import merge_state, merge_upgrade, state_path

#: Added to the age of workers that outlived a rolled-back generation (see ``age_of``).
ROLLED_BACK_AGE_BONUS = 1_000_000_000
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Retiring(Protocol):
    """Molds that the verdicts retire (``retire``: from the master's lookout thread), and that
    leave when the master is told to stop (``stop``: from its signal handler)."""

    def retire(self, store: RecordStore) -> None: ...

    def stop(self) -> None: ...


def ready_timeout(cfg: Any) -> float:
    """How long a new worker may take to import the app: gunicorn's ``timeout`` (30 s if 0)."""
    return float(cfg.timeout) if cfg.timeout and cfg.timeout > 0 else 30.0


class MasterBook:
    """What the master remembers across reloads (one per process; workers inherit a copy)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.store: RecordStore | None = None
        self.cfg: Any = None
        self.log: Any = None
        self.generation = 0
        # gunicorn loads the worker class before ``Arbiter.start()``: see notify.py
        self.systemd = MasterNotifier.take_from_environment()
        self._reported: set[int] = set()
        #: the promoted generation the state file names as serving, and the pids it shows
        self._serving: tuple[int, str] = (0, "")
        self.lookout: Lookout | None = None
        #: in a mold (a process that imports one generation's app and forks its workers): the
        #: generation of the workers built here
        self.mold_generation: int | None = None
        #: with --preload: what retires the molds no worker will come from (see molds.py)
        self.molds: Retiring | None = None
        self._gunicorn_hup: Callable[[int, Any], None] | None = None

    def generation_for(
        self, cfg: Any, log: Any, age: int, listeners: list[Any]
    ) -> tuple[int, RecordStore]:
        """The generation of a worker built (in the master, before fork) with *cfg* and
        gunicorn's *listeners*: a new ``Config`` opens a new generation (announced in the
        records, the log, the state file and to systemd)."""
        if self.mold_generation is not None and self.store is not None:
            return self.mold_generation, self.store
        if self.pid != os.getpid() or self.store is None:
            self._start(cfg, log)
        assert self.store is not None
        if cfg is not self.cfg:
            self.cfg = cfg
            if self.lookout is not None:
                self.lookout.watch_files(cfg)
            self.generation += 1
            # ``grace-plugins status`` prints them as gunicorn's "Listening at:" does
            merge_state(self.pid or 0, listeners=[str(one) for one in listeners])
            info = Announcement(cfg.workers, age, time.monotonic(), ready_timeout(cfg))
            self.store.announce(self.generation, info)
            if self.generation > 1:
                announce_reload(self.generation, cfg, log)
                merge_state(self.pid or 0, in_progress=True)
                self.systemd.reloading(self.generation, cfg.workers)
        return self.generation, self.store

    def _start(self, cfg: Any, log: Any) -> None:
        """The first worker this master builds: make the record directory, report stops,
        start the watcher."""
        self.pid, self.cfg, self.log, self.generation = os.getpid(), None, log, 0
        self._reported, self._serving = set(), (0, "")
        self.store = create_store(cfg, log)
        atexit.register(_remove_store, self.store, self.pid)
        # what ``grace-plugins reload/status --pid <master>`` read (see grace_plugins.state)
        merge_state(
            self.pid, role="gunicorn master", started=time.time(), upgrades=0, in_progress=False
        )
        self.systemd.master_started()
        self.lookout = Lookout(self.store, log, self.step, self._hand_over_hup)
        self.lookout.start()
        if threading.current_thread() is not threading.main_thread():
            return  # no signal handler can be set here
        for sig in _STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):  # gunicorn's handler: it only queues the signal
                signal.signal(sig, self._on_stop_signal(previous))
        previous = signal.getsignal(signal.SIGHUP)
        if callable(previous):
            self._gunicorn_hup = previous
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, previous: Callable[..., Any]) -> Callable[[int, Any], None]:
        """A stop signal is recorded before gunicorn acts on it (it then SIGTERMs the
        workers): a worker holding a reload's SIGTERM then knows that the master stops."""

        def handler(sig: int, frame: Any) -> None:
            previous(sig, frame)  # queued: gunicorn acts on it once this handler returns
            if self.store is not None and os.getpid() == self.pid:
                self.store.mark_master_stopping()
                if self.molds is not None:
                    self.molds.stop()
            self.systemd.stopping()

        return handler

    def _on_hup(self, sig: int, frame: Any) -> None:
        """A HUP is only recorded: the lookout thread hands it to gunicorn when it may go."""
        if self.lookout is not None and os.getpid() == self.pid:
            self.lookout.heard_hup()

    def _hand_over_hup(self) -> None:
        """Give gunicorn a HUP (its handler queues it; its loop then reloads)."""
        if self._gunicorn_hup is not None:
            self._gunicorn_hup(signal.SIGHUP, None)

    # -- what the master reads ---------------------------------------------------------------------
    @staticmethod
    def age_of(age: int, generation: int, store: RecordStore | None) -> float:
        """The age the master should see for a worker of *generation* (a query).

        ``Arbiter.reload()`` waits (up to ``graceful_timeout``, handling no other signal) until
        no worker is older than the reload, and ``manage_workers()`` SIGTERMs the oldest surplus
        workers. After a rollback the old workers are the ones to keep: they count as younger
        than the failed generation (the master stops waiting at once, never picks them). After
        a promotion the old workers drain: they count as just younger than the reload, still
        older than the new workers, so the master stops waiting once the new generation is
        ready (not when the drains end) and handles signals while they drain. Once the master
        stops, a reload it was making makes no more workers: it must not wait either.
        """
        if store is None:
            return age
        newest = store.newest_generation()
        if newest <= generation:
            return age
        if store.master_stopping() or store.recorded_verdict(newest) not in (None, PROMOTED):
            return age + ROLLED_BACK_AGE_BONUS
        for gen in range(newest, generation, -1):
            if store.recorded_verdict(gen) == PROMOTED:
                info = store.announcement(gen)
                first_age = info.first_age if info is not None else 0
                return first_age - 0.5 if first_age > 0 else age
        return age

    # -- reports (from the lookout thread) --------------------------------------------------------
    def step(self) -> bool:
        """Report each verdict recorded since the last step: to systemd first (as
        ``ExecReload=``, ``grace-plugins reload`` must not return before systemd heard that
        the reload is over), then in the state file; a master started by USR2 whose first
        generation is promoted retires the old master. A promotion is reported once the older
        workers stopped accepting: True while one waits for that (the next step is soon)."""
        store = self.store
        if store is None or os.getpid() != self.pid:
            return False
        newest = store.newest_generation()
        held = held_promotion(store, newest, self._reported, time.time())
        if held is None:
            self.systemd.poll(store)
        if self.molds is not None:
            self.molds.retire(store)
        self._reported = {gen for gen in self._reported if gen >= newest - KEEP_GENERATIONS}
        for gen in range(max(1, newest - KEEP_GENERATIONS), newest + 1):
            text = store.recorded_verdict(gen) if gen not in (self._reported | {held}) else None
            if text is None:
                continue
            self._reported.add(gen)
            found = Verdict.from_recorded(text)
            note_in_state_file(self.pid, store, gen, found)
            if found.kind == PROMOTED and gen > self._serving[0]:
                self._serving = (gen, pid_list(store.members(gen)))
            if gen == 1 and found.kind == PROMOTED:
                retire_previous_master(self.pid, self.log)
        self._show_serving_workers(store, newest)
        _forget_gone_respawns(store, newest)
        return held is not None

    def _show_serving_workers(self, store: RecordStore, newest: int) -> None:
        """Keep the serving pids of the state file true after the verdict: ``max_requests``,
        a crash and TTIN/TTOU replace or add workers, and ``status`` must not name the dead."""
        gen, shown = self._serving
        if not gen:
            return
        later = (store.generation(one) for one in range(gen + 1, newest + 1))
        pids = pid_list(serving_workers(store.generation(gen), later, pid_alive))
        if pids != shown:  # none ready (the respawns meet broken code) is said too
            self._serving = (gen, pids)
            merge_state(self.pid or 0, generation_pid=pids)


def held_promotion(store: RecordStore, newest: int, reported: set[int], now: float) -> int | None:
    """The promoted generation whose report waits (*now* is ``time.time()``): some worker of
    an older generation still accepts. It stops at its next look, within milliseconds; the
    report waits :data:`STOPPED_WAIT` at most. Generation 1 replaces no worker of its master."""
    for gen in range(newest, max(1, newest - KEEP_GENERATIONS), -1):
        if gen in reported or store.recorded_verdict(gen) != PROMOTED:
            continue
        since = store.verdict_time(gen)
        if since is None or now - since >= STOPPED_WAIT:
            return None
        older = (store.generation(one) for one in range(max(1, gen - KEEP_GENERATIONS), gen))
        return gen if still_accepting(older, pid_alive) else None
    return None


def _forget_gone_respawns(store: RecordStore, newest: int) -> None:
    for gen in range(max(1, newest - KEEP_GENERATIONS), newest + 1):
        if store.has_verdict(gen):
            workers = store.workers(gen)
            for member in gone_respawns(store.announcement(gen), list(workers), pid_alive):
                store.forget(member, workers[member])


def _remove_store(store: RecordStore, owner: int) -> None:
    if os.getpid() == owner:  # workers inherit the atexit list; only the master removes it
        store.remove()
        with contextlib.suppress(GraceError, OSError):
            os.unlink(state_path(owner))


def note_in_state_file(master: int, store: RecordStore, gen: int, found: Verdict) -> None:
    """Record the verdict on *gen* in the master's state file, for ``grace-plugins reload``
    and ``status`` (see grace_plugins.state)."""
    pids = pid_list(store.members(gen))
    serving = {"generation": gen, "generation_pid": pids, "generation_since": time.time()}
    if gen == 1:
        if found.kind == PROMOTED:
            merge_state(master, **serving)
    elif found.kind == PROMOTED:
        merge_upgrade(master, "ok", f"generation {gen} ready (workers {pids})", **serving)
    elif found.kind == ROLLED_BACK:
        merge_upgrade(master, "rolled_back", f"generation {gen} rolled back: {found.reason}")


def announce_reload(gen: int, cfg: Any, log: Any) -> None:
    log.info(
        "grace_plugins: reload: starting generation %s (%s workers); the running workers keep"
        " serving until it is ready",
        gen,
        cfg.workers,
    )
    if cfg.preload_app:  # still on in the master: the molds are off (GRACE_MOLDS=off)
        log.warning(
            "grace_plugins: --preload with GRACE_MOLDS=off: the app was imported once in the"
            " master, so HUP restarts the workers on the SAME code. To load new code send USR2"
            " (a new master), or unset GRACE_MOLDS (each generation imported once, in a mold)."
        )


def retire_previous_master(master: int, log: Any) -> None:
    """USR2 made whole: a master started by ``kill -USR2`` (gunicorn passes the old master's
    pid in ``GUNICORN_PID``) whose first workers are all ready stops the old master gracefully
    (SIGTERM: its workers drain); gunicorn then promotes it and renames its pidfile. If these
    workers never get ready, the old master stays."""
    old = os.environ.get("GUNICORN_PID", "")
    if not old.isdigit() or int(old) == master or not pid_alive(int(old)):
        return
    log.info(
        "grace_plugins: USR2: the new master %s is ready; stopping the old master %s gracefully",
        master,
        old,
    )
    try:
        os.kill(int(old), signal.SIGTERM)
    except OSError as exc:
        log.warning("grace_plugins: could not stop the old master %s: %s", old, exc)


MASTER = MasterBook()
