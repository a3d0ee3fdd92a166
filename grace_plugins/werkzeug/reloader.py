"""Werkzeug's reloader, turned into a hot-upgrade trigger inside the serving generation.

Werkzeug's reloader runs the server in a child process and, when a file changes, makes that
child exit with status 3 so that the parent starts a fresh one: the port is served by nobody
while the new code imports, and broken code leaves nothing serving. Here the supervisor plays
the parent's part, so only the *watching* is kept: werkzeug's own loop classes
(``stat`` / ``watchdog``, with ``extra_files``, ``exclude_patterns`` and ``interval``) run in a
daemon thread of the serving generation, and a change becomes
:meth:`~grace_plugins.generation.GenerationContext.request_upgrade`. The generation keeps
serving; the supervisor drains it once the new code is ready. If the new code is broken, the
upgrade is rolled back and this generation goes on serving *and watching*, so the next save
tries again.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug import _reloader
from werkzeug._internal import _log

from grace_plugins.process import process_start_time

#: After a first change event, wait this long for the rest of the same save (several events).
SETTLE_SECONDS = 0.1


def reloader_types() -> list[str]:
    """The ``reloader_type`` values werkzeug knows here (``auto``, ``stat``, ``watchdog``)."""
    return sorted(_reloader.reloader_loops)


def check_reloader_type(reloader_type: str) -> str | None:
    """Return a one-line problem with *reloader_type*, or ``None`` when it can be used."""
    if reloader_type not in _reloader.reloader_loops:
        return (
            f"Unknown reloader_type {reloader_type!r}: use one of"
            f" {', '.join(map(repr, reloader_types()))}."
        )
    if reloader_type == "watchdog":
        try:
            import watchdog.observers  # noqa: F401
        except ImportError:
            return (
                "reloader_type 'watchdog' needs the watchdog package: pip install watchdog,"
                " or use reloader_type='stat'."
            )
    return None


class _Hooks:
    """Mixed in before a werkzeug loop class: record changes instead of exiting."""

    _grace_lock: threading.Lock
    _grace_changed: set[str]
    _grace_event: threading.Event
    mtimes: dict[str, float]

    def _grace_setup(self) -> None:
        self._grace_lock = threading.Lock()
        self._grace_changed = set()
        self._grace_event = threading.Event()

    def trigger_reload(self, filename: str | bytes) -> None:
        name = os.fsdecode(filename)
        mtimes = getattr(self, "mtimes", None)
        if mtimes is not None:  # stat loop: remember the new time, or it fires every step
            try:
                mtimes[name] = os.stat(name).st_mtime
            except OSError:
                mtimes.pop(name, None)
        with self._grace_lock:
            self._grace_changed.add(os.path.abspath(name))
        self._grace_event.set()

    def take_changes(self) -> list[str]:
        with self._grace_lock:
            changed, self._grace_changed = self._grace_changed, set()
        self._grace_event.clear()
        return sorted(changed)


#: Event types that mean a file changed (werkzeug's list).
_CHANGE_TYPES = frozenset({"closed", "created", "deleted", "modified", "moved"})


def _watch_changes_only(loop: Any) -> None:
    """Make werkzeug's watchdog loop see file changes, and only them.

    Two problems of werkzeug 3.1 with watchdog 7 (both seen on these machines, also with a
    plain ``flask run --debug``):

    * watchdog 7 matches patterns against the *whole* path (``full_match``), so werkzeug's
      ``*.py`` never matches ``/project/app.py``: no change was ever noticed. The patterns
      are matched here with :func:`fnmatch.fnmatch`, where ``*`` spans directories, as they
      were written for (and as the stat loop applies ``exclude_patterns``);
    * watchdog subscribes to opens and reads by default. Here the new generation imports the
      whole app (thousands of files) while the old one watches; that overflowed the inotify
      queue, lost the events that mattered and made the watchers rescan in a loop. Only
      change events are asked for (where watchdog supports ``event_filter``).
    """
    from watchdog.events import FileSystemEventHandler

    old = loop.event_handler
    patterns = list(getattr(old, "patterns", None) or ["*.py", "*.pyc", "*.zip"])
    ignore = list(getattr(old, "ignore_patterns", None) or [])
    trigger = loop.trigger_reload

    def wanted(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in patterns) and not any(
            fnmatch.fnmatch(path, p) for p in ignore
        )

    class ChangeHandler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type not in _CHANGE_TYPES or event.is_directory:
                return
            for raw in (event.src_path, getattr(event, "dest_path", "")):
                path = os.fsdecode(raw) if raw else ""
                if path and wanted(path):
                    trigger(path)
                    return

    loop.event_handler = ChangeHandler()
    observer = loop.observer
    if "event_filter" not in inspect.signature(observer.schedule).parameters:
        return  # an older watchdog: it watches everything, as werkzeug expects
    from watchdog import events as ev

    changes = [
        ev.FileModifiedEvent,
        ev.FileClosedEvent,
        ev.FileCreatedEvent,
        ev.FileDeletedEvent,
        ev.FileMovedEvent,
        ev.DirCreatedEvent,
        ev.DirDeletedEvent,
        ev.DirMovedEvent,
    ]
    schedule = observer.schedule

    def schedule_changes(handler: Any, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("event_filter", changes)
        return schedule(handler, path, **kwargs)

    observer.schedule = schedule_changes


class HotReloader:
    """Watches the files werkzeug's reloader would and reports changes to *on_change*."""

    def __init__(
        self,
        on_change: Callable[[list[str]], None],
        *,
        extra_files: Iterable[str] | None = None,
        exclude_patterns: Iterable[str] | None = None,
        interval: float = 1,
        reloader_type: str = "auto",
        since: float | None = None,
    ) -> None:
        """:param since: when the app began loading (``time.time()``), or ``None``: watched
        files saved after it (or after this process started, if earlier: a script may import
        its app before it calls ``run_simple``) are reported as soon as the watch begins."""
        started = process_start_time()
        self.since = since if since is None or started is None else min(since, started)
        base = _reloader.reloader_loops[reloader_type]
        loop_class = type(f"Hot{base.__name__}", (_Hooks, base), {})
        self.loop = loop_class(
            extra_files=extra_files, exclude_patterns=exclude_patterns, interval=interval
        )
        self.loop._grace_setup()
        if not issubclass(base, _reloader.StatReloaderLoop):
            _watch_changes_only(self.loop)
        #: The stat loop polls; the watchdog loop is woken by its observer thread.
        self.is_stat = issubclass(base, _reloader.StatReloaderLoop)
        self.interval = interval
        self.on_change = on_change
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grace-reloader", daemon=True)

    @property
    def name(self) -> str:
        """werkzeug's name for the loop (``stat``, ``watchdog (inotify)``)."""
        return str(self.loop.name)

    def start(self) -> None:
        """Start watching in a daemon thread; does not block."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (a draining generation must not ask for upgrades); does not block."""
        self._stopped.set()
        self.loop._grace_event.set()

    def _run(self) -> None:
        try:
            with self.loop:  # one scan to record the current state (and start watchdog)
                _log("info", f" * Watching for file changes with {self.name}")
                self._catch_up()
                while not self._stopped.is_set():
                    self._step()
        except Exception as exc:  # never take the serving generation down
            _log("error", f" * The reloader stopped: {type(exc).__name__}: {exc}")

    def _catch_up(self) -> None:
        """Report the watched files saved after the app began loading, before the first scan.

        Watching starts once the generation serves (it can take seconds for watchdog to set
        up its watches), and the first scan takes what it finds as the baseline: a save in
        between would be missed until the next one. The candidates are the files the stat
        loop watches (imported modules, the extra files, and the Python files under the
        non-system ``sys.path`` entries, which the watchdog loop watches too), not only the
        imported modules: a module whose import failed is not in ``sys.modules``, and it is
        the very file a developer is fixing.
        """
        if self.since is None:
            return
        now = time.time()
        paths = _reloader._find_stat_paths(self.loop.extra_files, self.loop.exclude_patterns)
        for path in sorted(paths):
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if self.since <= mtime <= now:  # never a file dated in the future: no upgrade loop
                self.loop.trigger_reload(path)

    def _step(self) -> None:
        if self.is_stat:
            if self._stopped.wait(self.interval):
                return
            self.loop.run_step()
        elif self.loop._grace_event.wait(self.interval):
            self._stopped.wait(SETTLE_SECONDS)  # let the rest of the save arrive
        else:
            self.loop.run_step()  # watchdog: follow new module directories
        if self._stopped.is_set():
            return
        changed = self.loop.take_changes()
        if changed:
            self.on_change(changed)
