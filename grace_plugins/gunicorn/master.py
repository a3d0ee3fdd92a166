"""What runs in the gunicorn master for ``grace_plugins.Worker``, and what the master reads.

Gunicorn builds each worker object in the master before forking it, so this module stays loaded
there. It numbers the generations (each new ``Config``: the start, every HUP), owns the gate
directory and the state file of ``grace-plugins reload/status``, tells the master which workers
to keep after a rollback (:meth:`MasterBook.age_of`, a query), and under systemd reports each
verdict from one watcher thread (:meth:`MasterBook.step`, the effects).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from typing import Any

from grace_plugins.errors import GraceError
from grace_plugins.gunicorn.gate import PROMOTED, ROLLED_BACK, GateDir, pid_alive, pid_list
from grace_plugins.gunicorn.notify import MasterNotifier
from grace_plugins.state import merge_state, merge_upgrade, state_path

#: Added to the age of workers that outlived a rolled-back generation (see ``age_of``).
ROLLED_BACK_AGE_BONUS = 1_000_000_000
#: How often the systemd watcher looks for a verdict.
WATCH_INTERVAL = 0.1


def ready_timeout(cfg: Any) -> float:
    """How long a new worker may take to import the app: gunicorn's ``timeout`` (30 s if 0)."""
    return float(cfg.timeout) if cfg.timeout and cfg.timeout > 0 else 30.0


class MasterBook:
    """What the master remembers across reloads (one per process; workers inherit a copy)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.gate: GateDir | None = None
        self.cfg: Any = None
        self.generation = 0
        # gunicorn loads the worker class before ``Arbiter.start()``: see notify.py
        self.systemd = MasterNotifier.take_from_environment()
        self._watcher: threading.Thread | None = None

    def generation_for(self, cfg: Any, log: Any, age: int) -> tuple[int, GateDir]:
        """The generation of a worker built (in the master, before fork) with *cfg*: a new
        ``Config`` opens a new generation (announced in the gate, the log, the state file and
        to systemd)."""
        if self.pid != os.getpid() or self.gate is None:
            self.pid, self.gate, self.cfg, self.generation = os.getpid(), GateDir.create(), None, 0
            atexit.register(_remove_gate, self.gate, self.pid)
            # what ``grace-plugins reload/status --pid <master>`` read (see grace_plugins.state)
            merge_state(self.pid, started=time.time(), upgrades=0, in_progress=False)
            self.systemd.master_started()
            self._start_watcher()
        if cfg is not self.cfg:
            self.cfg = cfg
            self.generation += 1
            self.gate.open_generation(self.generation, cfg.workers, ready_timeout(cfg), age)
            if self.generation > 1:
                announce_reload(self.generation, cfg, log)
                merge_state(self.pid, in_progress=True)
                self.systemd.reloading(self.generation, cfg.workers)
        return self.generation, self.gate

    # -- what the master reads ---------------------------------------------------------------------
    @staticmethod
    def age_of(age: int, generation: int, gate: GateDir | None) -> float:
        """The age the master should see for a worker of *generation* (a query).

        ``Arbiter.reload()`` waits (up to ``graceful_timeout``, handling no other signal) until
        no worker is older than the reload, and ``manage_workers()`` SIGTERMs the oldest surplus
        workers. After a rollback the old workers are the ones to keep: they count as younger
        than the failed generation (the master stops waiting at once, never picks them). After
        a promotion the old workers drain: they count as just younger than the reload, still
        older than the new workers, so the master stops waiting once the new generation is
        ready (not when the drains end) and handles signals while they drain.
        """
        if gate is None:
            return age
        newest = gate.newest_generation()
        if newest <= generation:
            return age
        if gate.resolution(newest) not in (None, PROMOTED):
            return age + ROLLED_BACK_AGE_BONUS
        for gen in range(newest, generation, -1):
            if gate.resolution(gen) == PROMOTED:
                first_age = int((gate.generation_info(gen) or {}).get("first_age", 0))
                return first_age - 0.5 if first_age > 0 else age
        return age

    # -- what runs in the master -------------------------------------------------------------------
    def _start_watcher(self) -> None:
        """Under systemd only: one daemon thread reports verdicts (``step``) every 0.1 s. It
        logs nothing and takes no lock the workers use, so a fork meanwhile is safe."""
        if not self.systemd.active or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="grace-sd-notify", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.systemd.speaks():
            self.step()
            time.sleep(WATCH_INTERVAL)

    def step(self) -> None:
        """Tell systemd about the awaited verdict, then record it (see notify.py)."""
        if self.gate is None:
            return
        reported = self.systemd.poll(self.gate)
        if reported is not None:
            gen, verdict = reported
            status = PROMOTED if verdict == PROMOTED else ROLLED_BACK
            record_verdict(os.getpid(), self.gate, gen, status, verdict)


def _remove_gate(gate: GateDir, owner: int) -> None:
    if os.getpid() == owner:  # workers inherit the atexit list; only the master removes it
        gate.remove()
        with contextlib.suppress(GraceError, OSError):
            os.unlink(state_path(owner))


def record_verdict(master: int, gate: GateDir, gen: int, status: str, why: str) -> None:
    """Record the verdict on *gen* in the master's state file, for ``grace-plugins reload``
    and ``status`` (see grace_plugins.state)."""
    pids = pid_list(gate.members(gen))
    serving = {"generation": gen, "generation_pid": pids, "generation_since": time.time()}
    if gen == 1:
        if status == PROMOTED:
            merge_state(master, **serving)
    elif status == PROMOTED:
        merge_upgrade(master, "ok", f"generation {gen} ready (workers {pids})", **serving)
    elif status == ROLLED_BACK:
        merge_upgrade(master, "rolled_back", f"generation {gen} rolled back: {why}")


def announce_reload(gen: int, cfg: Any, log: Any) -> None:
    log.info(
        "grace_plugins: reload: starting generation %s (%s workers); the running workers keep"
        " serving until it is ready",
        gen,
        cfg.workers,
    )
    if cfg.preload_app:
        log.warning(
            "grace_plugins: --preload is on: the app was imported once in the master, so HUP"
            " restarts the workers on the SAME code. To load new code send USR2 (a new master),"
            " or run without --preload."
        )


def retire_previous_master(master: int, log: Any) -> None:
    """USR2 made whole: a master started by ``kill -USR2`` (gunicorn passes the old master's
    pid in ``GUNICORN_PID``) whose first workers are all ready stops the old master gracefully
    (SIGTERM: its workers drain); gunicorn then promotes it and renames its pidfile. If these
    workers never get ready, the old master stays."""
    old = os.environ.get("GUNICORN_PID", "")
    if not old.isdigit() or int(old) in (master, os.getpid()) or not pid_alive(int(old)):
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
