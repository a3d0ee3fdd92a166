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

import os
import threading
from collections.abc import Callable, Iterable

from werkzeug import _reloader
from werkzeug._internal import _log

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
    ) -> None:
        base = _reloader.reloader_loops[reloader_type]
        loop_class = type(f"Hot{base.__name__}", (_Hooks, base), {})
        self.loop = loop_class(
            extra_files=extra_files, exclude_patterns=exclude_patterns, interval=interval
        )
        self.loop._grace_setup()
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
                while not self._stopped.is_set():
                    self._step()
        except Exception as exc:  # never take the serving generation down
            _log("error", f" * The reloader stopped: {type(exc).__name__}: {exc}")

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
