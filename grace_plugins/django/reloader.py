"""Django's autoreloader, turned into a hot-upgrade trigger inside the serving generation.

``runserver``'s reloader runs the server in a child process and makes it exit with status 3
when a file changes, so that its parent starts a fresh one: the port is closed while the new
code imports, in-flight requests die, and broken code leaves nothing serving. Here only the
*watching* is kept. Django's own reloader class (``get_reloader()``: ``WatchmanReloader`` if
watchman runs, else ``StatReloader``) runs in a daemon thread of the serving generation, so it
watches what ``runserver`` watches: every imported module, and what the ``autoreload_started``
receivers add (template and locale directories). A change still sends Django's
``file_changed`` signal, then becomes a call to *on_change* instead of an exit; the generation
goes on serving, *and watching*, so if the new code is broken and rolled back, the next save
tries again. A template change is an upgrade too (``runserver`` would only reset its template
cache): the new generation renders it, and the old one finishes its requests unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.utils import autoreload

logger = logging.getLogger("django.utils.autoreload")

#: After a first change, wait this long for the rest of the same save (several files).
SETTLE_SECONDS = 0.1


class _HotHooks:
    """Mixed in before Django's reloader class: report changes instead of exiting."""

    _grace_primed: threading.Event
    _grace_report: Callable[[Path], None]

    def notify_file_changed(self, path: Path) -> None:
        try:  # receivers (template cache reset, translations) still hear about it
            autoreload.file_changed.send(sender=self, file_path=path)
        except Exception:
            logger.exception("A file_changed receiver failed for %s", path)
        self._grace_report(Path(path))

    # StatReloader: the first scan records every file's mtime; later scans compare.
    def snapshot_files(self) -> Any:
        yield from super().snapshot_files()  # type: ignore[misc]
        self._grace_primed.set()

    # WatchmanReloader: changes are reported from the subscriptions made here.
    def update_watches(self) -> None:
        super().update_watches()  # type: ignore[misc]
        self._grace_primed.set()


class HotWatcher:
    """Watches what Django's autoreloader watches; calls *on_change(paths)* on a change."""

    def __init__(self, on_change: Callable[[list[str]], None]) -> None:
        base = type(autoreload.get_reloader())
        #: Django's reloader class name (``StatReloader``, ``WatchmanReloader``).
        self.name = base.__name__
        self.reloader = type(f"Hot{base.__name__}", (_HotHooks, base), {})()
        self.reloader._grace_primed = threading.Event()
        self.reloader._grace_report = self._report
        self.on_change = on_change
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def start(self, timeout: float = 10.0) -> bool:
        """Start watching in daemon threads; block until the current state of the files is
        recorded (so a save right after this call is seen), at most *timeout* seconds.
        Return whether it was recorded in time."""
        logger.info("Watching for file changes with %s", self.name)
        threading.Thread(target=self._watch, name="grace-autoreload", daemon=True).start()
        threading.Thread(target=self._notify, name="grace-autoreload-notify", daemon=True).start()
        return self.reloader._grace_primed.wait(timeout)

    def stop(self) -> None:
        """Stop reporting changes (a draining generation must not ask for upgrades). Does not
        block; the watching thread ends at its next tick."""
        self._stopped.set()
        self._wake.set()
        self.reloader._stop_condition.set()

    def _watch(self) -> None:
        try:
            # Django's own loop: wait for the apps, load the URLconf, send
            # autoreload_started (template directories get watched), then tick until stopped.
            self.reloader.run(threading.main_thread())
        except Exception as exc:  # never take the serving generation down
            logger.error("The autoreloader stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self.reloader._grace_primed.set()

    def _report(self, path: Path) -> None:
        with self._lock:
            self._changed.add(str(path))
        self._wake.set()

    def _notify(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            if self._stopped.wait(SETTLE_SECONDS):
                return
            with self._lock:
                changed, self._changed = sorted(self._changed), set()
                self._wake.clear()
            if changed:
                self.on_change(changed)
