"""The gunicorn master's one helper thread: HUPs, saves and verdicts.

Gunicorn's loop has no periodic hook and ``reload()`` blocks its main thread, so the master
runs this thread for its whole life. It waits on two sources and a timer:

* the wake-up pipe of the master's SIGHUP handler, which only records the HUP (a byte) instead
  of queueing it for gunicorn: the thread hands HUPs to gunicorn's own handler as the
  :class:`~grace_plugins.gunicorn.hup_gate.HupGate` allows (one generation starting at a time,
  one follow-up, the upgrade interval);
* with ``--reload``, the file watcher (:class:`grace_plugins.watcher.Watcher`, one for the
  master's life): a save is one more HUP, through the same gate, so it is what a HUP is (a new
  generation, ready before the old one stops, rolled back when broken);
* every :data:`STEP` seconds while a generation starts or a HUP is held, every
  :data:`IDLE_STEP` seconds otherwise (an idle master costs next to no CPU, as gunicorn's own):
  the verdicts the workers recorded (``MasterBook.step``), the follow-up once due, and what the
  watcher watches (what the workers recorded they loaded).

It blocks every signal (they are the main thread's) and takes no lock a forked worker needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from grace_plugins.gunicorn.hup_gate import HupGate, Newest
from grace_plugins.gunicorn.records import RecordStore
from grace_plugins.gunicorn.verdicts import GRACE_SECONDS, PROMOTED
from grace_plugins.gunicorn.watched import SpecReader, to_watch
from grace_plugins.options import BY_NAME
from grace_plugins.pacing import Pacing
from grace_plugins.watcher import Watcher
from grace_plugins.watchspec import WatchSpec

#: How often the thread looks at the records while a generation starts or a HUP is held.
STEP = 0.1
#: How often it looks when nothing moves (a HUP or a save wakes it at once).
IDLE_STEP = 1.0
#: Starts at most once per this many seconds (the core's ``upgrade_interval``).
UPGRADE_INTERVAL = float(BY_NAME["upgrade_interval"].default)
#: Longest a handed-over HUP holds the next while no generation is announced.
HANDED_LIMIT = 10.0


class Lookout:
    """The thread, and what the master's SIGHUP handler tells it (:meth:`heard_hup`).

    :param step: ``MasterBook.step`` (report the recorded verdicts)
    :param hand_over: gunicorn's own SIGHUP handler, called with no argument (it queues the
        HUP for gunicorn's loop, which then reloads)
    """

    def __init__(
        self,
        store: RecordStore,
        log: Any,
        step: Callable[[], bool],
        hand_over: Callable[[], None],
    ) -> None:
        self.store = store
        self.log = log
        self.step = step
        self.hand_over = hand_over
        self.gate = HupGate(HANDED_LIMIT, Pacing(UPGRADE_INTERVAL))
        self.watcher: Watcher | None = None
        self.reloading = False  # the current config's --reload
        self.specs = SpecReader(store)
        self._watched: WatchSpec | None = None
        self._wait = STEP  # until the next turn, when nothing wakes the thread
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name="grace-lookout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def heard_hup(self) -> None:
        """The master's SIGHUP handler (main thread): only record it."""
        with contextlib.suppress(BlockingIOError):  # full: the thread has HUPs to read anyway
            os.write(self._wake_w, b"h")

    def watch_files(self, cfg: Any) -> None:
        """A new config (the start, every HUP): with ``--reload``, saves reload from now on
        (the watcher starts once, and lives as long as the master)."""
        self.reloading = bool(cfg.reload)
        if self.reloading and self.watcher is None:
            polling = cfg.reload_engine == "poll"
            self.watcher = Watcher(polling=polling, log=self._info)

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            try:
                self._turn()
            except Exception:  # never take the master down; say it and go on
                self.log.exception("grace_plugins: the master's lookout thread failed")
                time.sleep(STEP)

    def _turn(self) -> None:
        watcher = self.watcher
        sources = [self._wake_r] if watcher is None else [self._wake_r, watcher.fileno()]
        readable = select.select(sources, [], [], self._wait)[0]
        hups = self._read_hups() if self._wake_r in readable else 0
        saved = watcher.take() if watcher is not None and watcher.fileno() in readable else None
        now, newest = time.monotonic(), self._newest()
        holding = self.step()  # after: a verdict that frees a held HUP is reported before it
        if holding:  # its report waits for the old workers: so does the next reload
            newest = dataclasses.replace(newest, decided=False)
        self._wait = STEP
        if self.store.master_stopping():
            self.gate.drop()
            return
        for _ in range(hups):
            self._offer(now, newest, "HUP")
        if saved and self.reloading:
            names = ", ".join(os.path.basename(p) for p in saved.paths[:3])
            more = f" and {len(saved.paths) - 3} more" if len(saved.paths) > 3 else ""
            self._info(f"file changed: {names}{more}; reloading as on HUP")
            self._offer(now, newest, "save")
        if self.gate.due(now, newest):
            self._info("reload: the HUPs held while a generation started")
            self.hand_over()
        self._feed_watcher()
        if not (holding or self.gate.busy(now, newest)):
            self._wait = IDLE_STEP

    def _offer(self, now: float, newest: Newest, what: str) -> None:
        held_before = self.gate.follow_up
        if self.gate.hup(now, newest):
            self.hand_over()
        elif not held_before:
            self._info(
                f"{what} held: a reload started less than {self.gate.pacing.interval:g} s ago or"
                " has no verdict yet; one reload follows it"
            )

    def _read_hups(self) -> int:
        count = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._wake_r, 512):
                count += len(chunk)
        return count

    def _newest(self) -> Newest:
        number = self.store.newest_generation()
        info = self.store.announcement(number) if number else None
        until = info.started + info.ready_timeout + GRACE_SECONDS if info else 0.0
        return Newest(number, self.store.recorded_verdict(number) is not None, until)

    def _feed_watcher(self) -> None:
        if self.watcher is None:
            return
        specs = self.specs.specs()
        promoted = [gen for gen in specs if self.store.recorded_verdict(gen) == PROMOTED]
        found = to_watch(specs, promoted)
        if self.specs.problem:
            self.log.warning("grace_plugins: --reload: %s", self.specs.problem)
            self.specs.problem = ""
        if found is not None and found[0] != self._watched:
            self._watched, what = found
            self.watcher.watch(self._watched)
            files, globs = len(self._watched.files), len(self._watched.dirs)
            self._info(f"watching {files} files and {globs} globs: {what}")

    def _info(self, message: str) -> None:
        self.log.info("grace_plugins: %s", message)
