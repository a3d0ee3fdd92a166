"""systemd's notify protocol for a gunicorn master that runs ``grace_plugins.Worker``.

Gunicorn itself sends one ``READY=1`` when the arbiter has bound its sockets, before any worker
has imported the app, and nothing on reload or stop. Under ``Type=notify`` that makes
``systemctl start`` return while nothing serves yet, and under ``Type=notify-reload`` a reload
never completes (no ``RELOADING=1``/``READY=1`` pair). systemd accepts messages from the main
pid only (``NotifyAccess=main``), so the master must speak, not the workers:

* when gunicorn loads the worker class (in the master, before ``Arbiter.start()``), the master
  takes ``NOTIFY_SOCKET`` out of its environment: gunicorn's early ``READY=1`` becomes a no-op
  and the workers (the app) do not inherit the variable;
* ``READY=1`` + ``STATUS=`` once every worker of the first generation is ready;
* ``RELOADING=1`` + ``MONOTONIC_USEC=`` + ``STATUS=`` when a HUP opens a new generation, and
  ``READY=1`` + ``STATUS=`` when its verdict is in (promoted, or rolled back: the previous
  workers serve, so the service is ready either way and the ``STATUS=`` line says which);
* ``STOPPING=1`` when the master receives a stop signal (TERM, INT, QUIT), or at exit; nothing
  after it.

The master's watcher thread (see ``master.py``: gunicorn's loop offers no periodic hook, and
``reload()`` blocks the main thread up to ``graceful_timeout``) asks :meth:`MasterNotifier.poll`
for the verdict before it records it in the state file that ``grace-plugins reload`` waits for:
used as ``ExecReload=``, the command must not return before systemd has heard that the reload is
over. One lock orders these messages with ``STOPPING=1``. A master started by ``kill -USR2``
stays silent: its pid is not systemd's main pid.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from grace_plugins.gunicorn.records import RecordStore
from grace_plugins.gunicorn.verdicts import PROMOTED, pid_list
from grace_plugins.sdnotify import NOTIFY_VAR, Notifier


class MasterNotifier:
    """The gunicorn master's side of ``sd_notify``; every method is a no-op when inactive and
    in the workers (which inherit this object by fork)."""

    def __init__(self, address: str | None) -> None:
        self.notifier = Notifier(address or "")
        self.master_pid: int | None = None
        self.awaiting: int | None = 1  # the generation whose verdict ends a start or reload
        self.ready_sent = False
        self.stopping_sent = False
        # re-entrant: a stop signal's handler runs on the main thread, maybe inside ``reloading``
        self._lock = threading.RLock()

    @classmethod
    def take_from_environment(cls) -> MasterNotifier:
        """Take ``NOTIFY_SOCKET`` if this process is a gunicorn master (else leave it)."""
        if "gunicorn.arbiter" not in sys.modules or NOTIFY_VAR not in os.environ:
            return cls(None)
        address = os.environ.pop(NOTIFY_VAR)
        if os.environ.get("GUNICORN_PID"):  # started by USR2: not systemd's main pid
            return cls(None)
        return cls(address)

    @property
    def active(self) -> bool:
        """Whether the master speaks to systemd (also true in its workers, which inherit this
        object)."""
        return self.notifier.address is not None and self.master_pid is not None

    def speaks(self) -> bool:
        """In the master, until it said ``STOPPING=1`` (systemd then expects nothing else)."""
        return self.active and os.getpid() == self.master_pid and not self.stopping_sent

    def master_started(self) -> None:
        """Called in the master before its first fork: report stops from now on (the master
        calls :meth:`stopping` from its stop signals' handlers; this covers the exit)."""
        if self.notifier.address is None or self.master_pid is not None:
            return
        self.master_pid = os.getpid()
        atexit.register(self.stopping)

    def stopping(self) -> None:
        """``STOPPING=1``, once (the master received a stop signal, or exits)."""
        if os.getpid() != self.master_pid:
            return  # a worker's exit (it inherits the atexit list; the lock may be held)
        with self._lock:
            if self.speaks():
                self.stopping_sent = True
                self.notifier.stopping()

    def reloading(self, gen: int, workers: int) -> None:
        """A HUP opened generation *gen*: the service is reloading until its verdict."""
        with self._lock:
            if not self.speaks():
                return
            self.awaiting = gen
            if not self.ready_sent:
                return  # still starting: the first READY=1 waits for this generation instead
            self.notifier.reloading(f"reloading: starting generation {gen} ({workers} workers)")

    def poll(self, store: RecordStore) -> tuple[int, str] | None:
        """If the awaited generation has a verdict, report the service ready (again) and
        return ``(generation, verdict)``; else None. While the first generation is not decided
        (a HUP during the start), the start is not over."""
        with self._lock:
            gen = self.awaiting
            if gen is None or not self.speaks():
                return None
            verdict = store.recorded_verdict(gen)
            if verdict is None or (not self.ready_sent and store.recorded_verdict(1) is None):
                return None
            self.awaiting = None
            self.ready_sent = True
            pids = pid_list(store.members(gen))
            if verdict == PROMOTED:
                status = f"serving with generation {gen} (workers {pids})"
            elif gen == 1:
                status = f"serving with generation 1, incomplete ({verdict})"
            else:
                status = (
                    f"upgrade rolled back: generation {gen}: {verdict}; the previous workers serve"
                )
            self.notifier.ready(status)
            return gen, verdict
