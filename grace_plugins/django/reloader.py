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

Django's first scan takes the files' mtimes as they are; a save made while the generation was
still loading would be invisible. With ``catch_up``, that first scan also reports every watched
file saved since this process started, and every Python file beside the project's modules (a
module whose import failed is not in ``sys.modules``, and it is the file a developer fixes).
"""

from __future__ import annotations

import logging
import os
import site
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import django
from django.utils import autoreload

from grace_plugins.process import process_start_time

logger = logging.getLogger("django.utils.autoreload")

#: After a first change, wait this long for the rest of the same save (several files).
SETTLE_SECONDS = 0.1


def _library_dirs() -> tuple[str, ...]:
    """Where installed code lives (the standard library, site-packages, Django): not the
    project's."""
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    dirs.add(os.path.dirname(django.__file__))
    return tuple(str(Path(d).resolve()) + os.sep for d in dirs if d)


def _beside_project_modules(files: Iterable[Path]) -> set[Path]:
    """The Python files in the directories of the project's watched modules: where a module
    whose import failed (absent from ``sys.modules``, so unwatched) most likely is."""
    library = _library_dirs()
    dirs = {f.parent for f in files if f.suffix == ".py"}
    found: set[Path] = set()
    for directory in dirs:
        if (str(directory) + os.sep).startswith(library):
            continue
        try:
            found.update(p for p in directory.iterdir() if p.suffix == ".py")
        except OSError:
            continue
    return found


def _mtimes(files: Iterable[Path]) -> dict[Path, float]:
    found: dict[Path, float] = {}
    for path in files:
        try:
            found[Path(path)] = Path(path).stat().st_mtime
        except OSError:
            continue
    return found


class _HotHooks:
    """Mixed in before Django's reloader class: report changes instead of exiting."""

    _grace_primed: threading.Event
    _grace_report: Callable[[Path], None]
    _grace_since: float | None

    def notify_file_changed(self, path: Path) -> None:
        try:  # receivers (template cache reset, translations) still hear about it
            autoreload.file_changed.send(sender=self, file_path=path)
        except Exception:
            logger.exception("A file_changed receiver failed for %s", path)
        self._grace_report(Path(path))

    # StatReloader: the first scan records every file's mtime; later scans compare.
    def snapshot_files(self) -> Any:
        first = not self._grace_primed.is_set()
        seen: dict[Path, float] = {}
        for path, mtime in super().snapshot_files():  # type: ignore[misc]
            if first:
                seen[path] = mtime
            yield path, mtime
        if first:
            self._grace_catch_up(seen)
        self._grace_primed.set()

    # WatchmanReloader: changes are reported from the subscriptions made here.
    def update_watches(self) -> None:
        first = not self._grace_primed.is_set()
        super().update_watches()  # type: ignore[misc]
        if first:
            self._grace_catch_up(_mtimes(self.watched_files()))  # type: ignore[attr-defined]
        self._grace_primed.set()

    def _grace_catch_up(self, seen: dict[Path, float]) -> None:
        """Report the files saved since the load began: the first scan's baseline hides them.
        *seen* is that scan (file: mtime); the files beside the project's modules are added."""
        since = self._grace_since
        if since is None:
            return
        now = time.time()
        files = dict(seen)
        files.update(_mtimes(_beside_project_modules(seen).difference(seen)))
        for path, mtime in sorted(files.items()):
            if since <= mtime <= now:  # never a file dated in the future: no upgrade loop
                self.notify_file_changed(path)


class HotWatcher:
    """Watches what Django's autoreloader watches; calls *on_change(paths)* on a change."""

    def __init__(self, on_change: Callable[[list[str]], None], *, catch_up: bool = False) -> None:
        """:param catch_up: in a generation, report at the first scan the watched files saved
        since this process started (its load began then), which that scan cannot tell apart
        from the others."""
        base = type(autoreload.get_reloader())
        #: Django's reloader class name (``StatReloader``, ``WatchmanReloader``).
        self.name = base.__name__
        self.reloader = type(f"Hot{base.__name__}", (_HotHooks, base), {})()
        self.reloader._grace_primed = threading.Event()
        self.reloader._grace_report = self._report
        self.reloader._grace_since = process_start_time() if catch_up else None
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
