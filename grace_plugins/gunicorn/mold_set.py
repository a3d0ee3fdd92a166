"""The molds a master holds, as its two threads share them (see :mod:`~.molds`): the main
thread adds and drops them as it forks; the lookout thread retires those no worker will come
from any more and writes them to the state file; a stop signal makes them all leave, and the
master reaps them at its exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from grace_plugins.gunicorn.master import MASTER
from grace_plugins.gunicorn.mold_handle import MoldHandle, reap
from grace_plugins.gunicorn.mold_rules import to_retire
from grace_plugins.gunicorn.records import RecordStore, verdict_kind
from grace_plugins.state import merge_state


class MoldSet:
    """The molds that answered ready, by generation."""

    def __init__(self, log: Any, on_exit: Callable[[int, int], None]) -> None:
        self.log = log
        self.handles: dict[int, MoldHandle] = {}  # the main thread's
        self.on_exit = on_exit  # (pid, generation) of a mold that exited: the child_exit hook
        self._exits: dict[int, int] = {}  # pid -> generation: molds whose exit is not told yet
        self.master = os.getpid()
        atexit.register(self.reap_leftovers)
        # shared with the lookout thread (which retires molds)
        self._lock = threading.Lock()
        self._pids: dict[int, list[int]] = {}  # generation -> its mold's pid and its spare's
        self._retired: set[int] = set()
        self._snapshot: list[dict[str, Any]] = []  # the molds, for the state file
        self._dirty = False
        self._serving = 0  # the newest generation promoted (remembered: old records are pruned)
        self._stopped: set[int] = set()  # the molds a stop signal made leave

    def add(self, handle: MoldHandle) -> None:
        """A new mold answered ready, or a mold has a new spare (main thread)."""
        self.handles[handle.gen] = handle
        for pid in handle.pids():
            self._exits[pid] = handle.gen
        with self._lock:
            self._pids[handle.gen] = handle.pids()
            retired = handle.gen in self._retired
        if retired:  # the lookout retired its generation meanwhile: it must not stay
            for pid in handle.pids():
                _signal(pid, signal.SIGTERM)
        self.note_state()

    def promote(self, handle: MoldHandle) -> MoldHandle | None:
        """*handle*'s mold is gone (or did not answer: it is made to leave): its spare, if it
        is alive, takes its place (main thread)."""
        spare = handle.spare
        with contextlib.suppress(OSError):
            handle.wire.sock.close()
        _signal(handle.pid, signal.SIGTERM)
        if spare is None or spare.gone():
            return None
        spare.workers = handle.workers
        self.add(spare)
        self.log.warning(
            "grace_plugins: mold %s (generation %s) is gone; its spare, mold %s, forks the"
            " generation's workers from now on",
            handle.pid,
            handle.gen,
            spare.pid,
        )
        return spare

    def prune(self) -> None:
        """Forget the molds the lookout retired (their sockets close here, on this thread)."""
        with self._lock:
            retired = set(self._retired)
        for gen in retired & set(self.handles):
            self.drop(self.handles[gen])

    def drop(self, handle: MoldHandle) -> None:
        """Forget *handle* and make its mold and its spare leave (main thread)."""
        for one in (handle, handle.spare):
            if one is not None:
                with contextlib.suppress(OSError):
                    one.wire.sock.close()
                _signal(one.pid, signal.SIGTERM)
        self.handles.pop(handle.gen, None)
        with self._lock:
            self._pids.pop(handle.gen, None)
            self._retired.discard(handle.gen)
        self.note_state()

    def report_exits(self) -> None:
        """Tell :attr:`on_exit` of each mold that exited since (main thread)."""
        for pid, gen in list(self._exits.items()):
            if _exited(pid):
                del self._exits[pid]
                self.on_exit(pid, gen)

    def serving(self, store: RecordStore | None) -> int:
        """The newest generation promoted (0 before any): the code respawns must run."""
        found = store.newest_promoted() if store is not None else 0
        with self._lock:
            self._serving = max(self._serving, found)
            return self._serving

    def retire(self, store: RecordStore) -> None:
        """SIGTERM the molds no worker will come from any more (see ``to_retire``)."""
        serving = self.serving(store)
        with self._lock:
            pids = dict(self._pids)
            done = set(self._retired)
        verdicts = {gen: verdict_kind(store, gen) for gen in pids}
        for gen in to_retire(pids, verdicts, serving):
            if gen in done:
                continue
            with self._lock:
                self._retired.add(gen)
            for pid in pids[gen]:
                _signal(pid, signal.SIGTERM)
            self.log.info(
                "grace_plugins: mold %s (generation %s) retired: no worker comes from it any more",
                " and its spare ".join(map(str, pids[gen])),
                gen,
            )
        self._write_state(bool(to_retire(pids, verdicts, serving)))

    def note_state(self) -> None:
        """The molds changed (main thread): the lookout thread writes them to the state file
        (its only writer in the master: merges from two threads could lose a field)."""
        with self._lock:
            self._snapshot = [handle.as_state() for handle in list(self.handles.values())]
            self._dirty = True

    def _write_state(self, changed: bool) -> None:
        """The molds alive, for ``grace-plugins status`` (the master's state file)."""
        with self._lock:
            if not (changed or self._dirty) or MASTER.pid is None:
                return
            self._dirty = False
            molds = [m for m in self._snapshot if m["generation"] not in self._retired]
        merge_state(MASTER.pid, molds=molds)

    # -- the master stops --------------------------------------------------------------------------
    def stop(self) -> None:
        """The master received a stop signal (called from its handler: no lock taken): every
        mold leaves now. A mold holds the listening sockets; left alone until the master exits,
        it would keep them listening, and connections would wait in the backlog instead of
        being refused. Once each: a second stop signal (a quick stop) finds them gone."""
        for pid in self._running():
            if pid not in self._stopped:
                self._stopped.add(pid)
                _signal(pid, signal.SIGTERM)

    def reap_leftovers(self) -> None:
        """Once gunicorn stopped its workers (and, failing that, at the master's exit), reap
        the molds gunicorn's loop did not (bounded), and tell :attr:`on_exit` of each."""
        if os.getpid() != self.master:
            return  # a worker leaving (it inherited this hook)
        for pid in self._running():
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # reaped by gunicorn's loop
            if not done:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                reap(pid, kill=False)
        self.report_exits()

    def _running(self) -> list[int]:
        """Every mold and spare this master started that has not exited: serving, retired
        and told to leave, or dropped (one stuck, or stopped by SIGSTOP, still holds the
        listening sockets: the stop and the exit must not forget it)."""
        return [pid for pid in list(self._exits) if not _exited(pid)]


def _signal(pid: int, sig: int) -> None:
    """Signal mold *pid* unless it exited and was reaped (its pid may be another's now)."""
    if not _exited(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _exited(pid: int) -> bool:
    """Whether child *pid* exited (reaped already, by gunicorn's loop, or not yet)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
