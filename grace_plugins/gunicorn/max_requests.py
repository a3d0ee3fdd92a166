"""A worker at gunicorn's ``max_requests``: whether it goes, from what the records say.

The rule is :mod:`~grace_plugins.gunicorn.recycle`'s (pure); this reads its inputs, takes the
one replacement at a time, and moves the limit on while the worker serves on.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from grace_plugins.gunicorn.master import ready_timeout
from grace_plugins.gunicorn.mold_worker import forked_from_a_mold
from grace_plugins.gunicorn.records import verdict_kind
from grace_plugins.gunicorn.recycle import why_serve_on
from grace_plugins.process import pid_alive


class MaxRequests:
    """One worker's judge (its request threads call :meth:`judge`)."""

    def __init__(self) -> None:
        #: one thread at a time: a thread that moves the limit on must not keep a worker that
        #: another thread's claim sends away
        self._lock = threading.Lock()
        self._said = ""  # why it serves on, as last logged (each new reason is said once)

    def judge(self, worker: Any) -> None:
        """*worker*'s next request reaches ``max_requests``: let gunicorn stop it after that
        request, or move the limit on by ``max_requests`` (judged again then) and say why."""
        store = worker.store
        with self._lock:
            if store is None or not worker.alive or worker.nr + 1 < worker.max_requests:
                return  # stopping already, or another thread judged meanwhile
            newest = store.newest_generation()
            me = os.getpid()
            timeout = ready_timeout(worker.cfg)
            why = why_serve_on(
                worker.generation,
                newest,
                verdict_kind(store, newest),
                store.failed_respawns(),
                [pid for pid in store.loading(timeout) if pid != me and pid_alive(pid)],
                from_a_mold=forked_from_a_mold(worker.tmp),
            )
            if not why:
                holder = store.claim_replacement(me, timeout + float(worker.cfg.graceful_timeout))
                why = f"worker {holder} is being replaced first" if holder else ""
            if not why:
                return
            worker.max_requests = worker.nr + max(1, worker.cfg.max_requests)
        if why != self._said:
            self._said = why
            worker.log.warning(
                "grace_plugins: worker %s (generation %s) reached max_requests and serves on (a"
                " replacement imports the code on disk): %s",
                me,
                worker.generation,
                why,
            )
