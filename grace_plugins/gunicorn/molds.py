"""The master's side of the molds: ``--preload`` that reloads (see docs/gunicorn.md).

Gunicorn's ``--preload`` imports the app in the master and forks the workers from it, so a HUP
never loads new code. With ``grace_plugins.Worker`` the master never imports the app: each
generation's app is imported once, in a *mold* (:mod:`grace_plugins.gunicorn.mold`), and its
workers are forked from it. Gunicorn's master forks every worker itself (``spawn_worker``), so
on the one arbiter of this process, and only with ``--preload``, :class:`Molds` takes that
method's place (an attribute of the object; gunicorn's class is not changed). It does what
gunicorn's does in the master: count the age, build the worker object (its heartbeat file),
call ``pre_fork``, record ``WORKERS[pid]``; but the fork is the mold's, twice, so that the
worker is re-parented to the master (a child subreaper) and gunicorn's ``reap_workers`` reaps
it, its heartbeat, ``timeout``, TTIN/TTOU and ``max_requests`` working as they do. Which mold
forks which worker, and which molds are retired, are :mod:`~.mold_rules`' (pure).

The master waits for a new mold's answer inside ``spawn_worker`` (as gunicorn's ``reload()``
waits for its new workers), bounded by ``timeout``; it reaps a mold that failed itself, so
gunicorn never sees a mold's exit status (3 or 4 would halt it). The molds it holds are a
:class:`~.mold_set.MoldSet`: retired (their generation replaced or rolled back) by the master's
lookout thread, made to leave by a stop signal, reaped once gunicorn stopped its workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from grace_plugins.gunicorn.master import MASTER, ready_timeout
from grace_plugins.gunicorn.mold import run_mold
from grace_plugins.gunicorn.mold_copy import mold_in_place
from grace_plugins.gunicorn.mold_handle import MoldHandle, first_answer, reap
from grace_plugins.gunicorn.mold_rules import MOLDS_VAR, molds_wanted, pick
from grace_plugins.gunicorn.mold_set import MoldSet
from grace_plugins.gunicorn.mold_worker import disown
from grace_plugins.gunicorn.records import RecordStore, verdict_kind
from grace_plugins.gunicorn.verdicts import ROLLED_BACK, Verdict
from grace_plugins.process import become_subreaper
from grace_plugins.wire import Wire

#: How long past gunicorn's ``timeout`` the master waits for a mold's answer before killing it
#: (the mold's own alarm fires at the timeout, unless the import hangs in C).
MOLD_SLACK = 2.0
MOLD, FALLBACK, FAILED = "mold", "each worker imports", "failed"


@dataclass
class Plan:
    """The generation of the arbiter's current config, and how its workers are made."""

    cfg: Any
    gen: int
    members: range  # gunicorn's ages of the workers its reload forks
    how: str  # MOLD, FALLBACK or FAILED


@dataclass(frozen=True)
class ExitedMold:
    """What gunicorn's ``child_exit(server, worker)`` hook gets for a mold that exited: its
    ``pid`` (as a worker's), ``ppid`` (the master) and ``generation``."""

    pid: int
    ppid: int
    generation: int


def take_over_preload(frame: FrameType | None) -> None:
    """Called by the worker class's ``setup()`` (gunicorn loads the class, in the master, each
    time it loads a config: the start, every HUP), before gunicorn would import the app for
    ``--preload``: the arbiter found among the callers gets its molds."""
    from gunicorn.arbiter import Arbiter

    for _ in range(4):
        if frame is None:
            return
        arbiter = frame.f_locals.get("self")
        if isinstance(arbiter, Arbiter):
            molds = MASTER.molds
            if not isinstance(molds, Molds) or molds.arbiter is not arbiter:
                molds = Molds(arbiter)
            molds.configure(arbiter.cfg)
            return
        frame = frame.f_back


class Molds:
    """The molds of one arbiter, and the ``spawn_worker`` that forks from them."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.log = arbiter.log
        self.preload_cfg: Any = None
        self.plan: Plan | None = None
        self.subreaper: bool | None = None
        self.registry = MoldSet(arbiter.log, self._child_exit)

    def configure(self, cfg: Any) -> None:
        """A config was loaded: with ``--preload``, the master does not import the app (the
        molds do) and forks workers here."""
        if not cfg.preload_app or not _wanted(cfg, self.log if self.plan is not None else None):
            self.preload_cfg = None
            return
        cfg.set("preload_app", False)  # in the master only: gunicorn must not import the app
        self.preload_cfg = cfg
        if self.subreaper is None:
            self.subreaper = become_subreaper()
        self.arbiter.spawn_worker = self.spawn_worker
        self.arbiter.manage_workers = self.manage_workers
        self.arbiter.stop = self.stop_workers_then_molds
        MASTER.molds = self

    # -- spawning (the master's main thread) -------------------------------------------------------
    def spawn_worker(self) -> int | None:
        """``Arbiter.spawn_worker`` for ``--preload``: fork the next worker from a mold."""
        cfg = self.arbiter.cfg
        if cfg is not self.preload_cfg:
            return self._gunicorn_spawn()
        store = MASTER.store
        if store is not None and store.master_stopping():
            self.registry.stop()  # any the handler did not reach (it came during a fork)
            return None  # the loop that spawns is ending: no new worker
        self.registry.prune()
        age = self.arbiter.worker_age + 1
        plan = self.plan
        if plan is None or plan.cfg is not cfg:
            plan = self.plan = self._new_plan(cfg, age)
        if age in plan.members and plan.how == FAILED:
            # rolled back: the reload forks no worker, but its ages are used up, so that a
            # later spawn is a respawn (from the serving generation), not another member
            self.arbiter.worker_age = age
            return None
        while True:
            handles = self.registry.handles
            verdicts = {gen: verdict_kind(store, gen) for gen in handles}
            serving = self.registry.serving(store)
            gen = pick(age, plan.members, plan.gen, serving, set(handles), verdicts)
            if gen is None:
                return self._gunicorn_spawn()
            handle = handles[gen]
            if not handle.gone():
                return self._fork_from(handle, plan)
            if self.registry.promote(handle) is not None:
                continue
            self.log.warning(
                "grace_plugins: mold %s (generation %s) is gone; the next worker comes from"
                " another mold, or imports the app itself",
                handle.pid,
                gen,
            )
            self.registry.drop(handle)

    def _keep_a_spare(self) -> None:
        """Make sure the serving generation's mold has a live spare: forked idle from it, it
        takes the mold's place if it dies, so respawns never import the code on disk (newer,
        or broken, never HUPed). In gunicorn's loop: in a reload's forks it would delay them."""
        store = MASTER.store
        if self.arbiter.cfg is not self.preload_cfg or store is None or store.master_stopping():
            return
        handle = self.registry.handles.get(self.registry.serving(store))
        if handle is None or handle.gone():
            return  # none to copy (the next respawn promotes a live spare, or imports)
        old = handle.spare
        if old is not None and not old.gone():
            return
        if old is not None:
            with contextlib.suppress(OSError):
                old.wire.sock.close()
        handle.spare = handle.make_spare()
        if handle.spare is None:
            stuck = handle.gone()  # it did not answer in time: given up, as after a fork
            self.log.error(
                "grace_plugins: mold %s (generation %s) did not fork its spare%s",
                handle.pid,
                handle.gen,
                "; it is given up (respawns import the app themselves)" if stuck else "",
            )
            if stuck:
                self.registry.drop(handle)
            return
        self.registry.add(handle)
        self.log.info(
            "grace_plugins: mold %s (generation %s) forked its spare, mold %s, which takes its"
            " place if it dies",
            handle.pid,
            handle.gen,
            handle.spare.pid,
        )

    def manage_workers(self) -> None:
        """``Arbiter.manage_workers`` (each turn of gunicorn's loop): first, the molds that
        exited since are told to the ``child_exit`` hook, the sockets of the molds the lookout
        retired are closed, and the serving mold gets a spare."""
        self.registry.report_exits()
        self.registry.prune()
        self._keep_a_spare()
        type(self.arbiter).manage_workers(self.arbiter)

    def _child_exit(self, pid: int, gen: int) -> None:
        """gunicorn's ``child_exit`` hook, for a mold: it imported the app, so it may have left
        per-process state behind, as a worker does (prometheus_client's multiprocess files)."""
        try:
            self.arbiter.cfg.child_exit(self.arbiter, ExitedMold(pid, self.arbiter.pid, gen))
        except Exception:  # noqa: BLE001 - as gunicorn's reap_workers treats the hook
            self.log.exception("Exception during child_exit")

    def _gunicorn_spawn(self) -> int | None:
        """gunicorn's own ``spawn_worker``: forked from the master, the worker imports."""
        pid: int | None = type(self.arbiter).spawn_worker(self.arbiter)
        return pid

    def _new_plan(self, cfg: Any, age: int) -> Plan:
        gen, store = MASTER.generation_for(cfg, self.log, age, self.arbiter.LISTENERS)
        plan = Plan(cfg, gen, range(age, age + cfg.workers), FALLBACK)
        if not self.subreaper:
            self.log.warning(
                "grace_plugins: --preload: this system cannot make the master the parent of"
                " workers forked by another process (Linux's PR_SET_CHILD_SUBREAPER), so each"
                " worker imports the app itself (HUP still loads new code)"
            )
            return plan
        plan.how = self._start_mold(plan, store)
        return plan

    def _start_mold(self, plan: Plan, store: RecordStore) -> str:
        """Fork the mold of *plan*'s generation and wait for its answer (bounded)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        others = [
            one.wire.sock.fileno()
            for handle in self.registry.handles.values()
            for one in (handle, handle.spare)
            if one is not None
        ]
        since = time.time()
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            parent.close()
            run_mold(self.arbiter, plan.gen, child, since, others)
            os._exit(0)  # never back into the master's frames (a worker leaves by SystemExit)
        child.close()
        wire = Wire(parent)
        timeout = ready_timeout(plan.cfg)
        deadline = time.monotonic() + timeout + MOLD_SLACK
        answer, why = first_answer(wire, store, deadline, timeout)
        if "ready" in answer:
            mold = mold_in_place(plan.gen, pid, answer, self.log, self._child_exit)
            self.registry.add(MoldHandle(plan.gen, mold, wire, time.time()))
            return MOLD
        parent.close()
        status = reap(pid, kill=not answer)
        self._child_exit(pid, plan.gen)
        if "unsafe" in answer:
            self.log.warning(
                "grace_plugins: generation %s: --preload cannot share the app between the"
                " workers: %s; each worker imports the app itself",
                plan.gen,
                answer["unsafe"],
            )
            return FALLBACK
        if why == "stopping":
            return FAILED  # the stop ended it, not the new code: no verdict
        reason = answer.get("failed") or f"{why} ({status})"
        self._roll_back(plan.gen, store, f"the mold (pid {pid}): {reason}")
        return FAILED

    def _roll_back(self, gen: int, store: RecordStore, reason: str) -> None:
        if gen < 2 and not store.ever_ready():
            from gunicorn.errors import HaltServer

            raise HaltServer("App failed to load.", self.arbiter.APP_LOAD_ERROR)
        if store.record_verdict(gen, Verdict(ROLLED_BACK, reason), by_master=True):
            self.log.error(
                "grace_plugins: generation %s rolled back (%s); the previous workers keep serving",
                gen,
                reason,
            )

    def _fork_from(self, handle: MoldHandle, plan: Plan) -> int | None:
        """What gunicorn's ``spawn_worker`` does in the master, with the mold's fork."""
        arbiter = self.arbiter
        arbiter.worker_age += 1
        age = arbiter.worker_age
        worker = arbiter.worker_class(
            age, arbiter.pid, arbiter.LISTENERS, arbiter.app, arbiter.timeout / 2.0, arbiter.cfg,
            arbiter.log,
        )  # fmt: skip
        arbiter.cfg.pre_fork(arbiter, worker)
        pid = handle.fork(age, worker.tmp.fileno())
        store = MASTER.store
        stopping = store is not None and store.master_stopping()
        if stopping:
            self.registry.stop()  # the stop came during the fork: this mold may not have heard
        if pid is None:
            disown(worker.tmp.fileno())  # a worker the mold forked anyway must not serve
            worker.tmp.close()
            log = self.log.info if stopping else self.log.error
            log(
                "grace_plugins: mold %s (generation %s) did not fork a worker%s",
                handle.pid,
                handle.gen,
                " (the master stops)" if stopping else "",
            )
            if stopping or self.registry.promote(handle) is None:
                self.registry.drop(handle)
            if age in plan.members and handle.gen == plan.gen and store is not None:
                if not stopping:  # else the stop ended it, not the new code
                    reason = f"the mold (pid {handle.pid}) exited while forking its workers"
                    self._roll_back(plan.gen, store, reason)
                plan.how = FAILED  # the reload's other members are not forked either
            return None
        worker.pid = pid
        arbiter.WORKERS[pid] = worker
        stats = getattr(arbiter, "_stats", None)  # gunicorn >= 25: the control socket's
        if isinstance(stats, dict) and "workers_spawned" in stats:
            stats["workers_spawned"] += 1
        handle.workers = [p for p in handle.workers if p in arbiter.WORKERS] + [pid]
        self.registry.note_state()
        return pid

    # -- what the master's other parts call -------------------------------------------------------
    def retire(self, store: RecordStore) -> None:
        """The lookout thread's step (see :meth:`MoldSet.retire`)."""
        self.registry.retire(store)

    def stop(self) -> None:
        """The stop signal's handler (see :meth:`MoldSet.stop`)."""
        self.registry.stop()

    def stop_workers_then_molds(self, graceful: bool = True) -> None:
        """``Arbiter.stop``: gunicorn's, then the molds reaped and told to ``child_exit``, so
        that ``on_exit`` (``halt`` calls it next) comes last, as after gunicorn's workers."""
        type(self.arbiter).stop(self.arbiter, graceful)
        self.registry.reap_leftovers()


def _wanted(cfg: Any, log: Any) -> bool:
    """``GRACE_MOLDS`` (gunicorn's ``raw_env`` first: it is not in the environment yet when
    the config loads). A bad value stops the start (the worker's ``check_config`` says it);
    on a HUP (*log* given) it is said, and molds stay."""
    try:
        return molds_wanted(cfg.env.get(MOLDS_VAR, os.environ.get(MOLDS_VAR)))
    except ValueError as exc:
        if log is not None:
            log.error("grace_plugins: %s", exc)
        return True
