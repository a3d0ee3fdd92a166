"""A generation's side of the file watcher: telling the supervisor what to watch.

With the reloader on, the serving generation sends what its framework's reloader would watch
(``serving(since)``, a :class:`~grace_plugins.watchspec.WatchSpec`) once it is ready, from a
thread of its own (for a Django site that is tens of milliseconds of work, never on a request's
path), and again whenever it imported more modules (a view that imports a module at its first
request: werkzeug's and Django's reloaders read the module list on every tick too). A
generation whose app fails to load sends what it tried (:func:`grace_plugins.loaded.tried_spec`),
so that the fix of the file that broke it starts the next upgrade.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable, Iterable

from grace_plugins.channel import watch_message
from grace_plugins.loaded import tried_spec
from grace_plugins.watchspec import WatchSpec

#: How often the serving generation looks for newly imported modules (s).
RECHECK = 1.0

Serving = Callable[[float | None], WatchSpec]


class WatchReporter:
    """Sends this generation's watch spec over its channel (*send* one line)."""

    def __init__(
        self,
        send: Callable[[str], None],
        serving: Serving,
        since: float | None,
        *,
        extra_files: Iterable[str] = (),
        exclude: Iterable[str] = (),
        recheck: float = RECHECK,
    ) -> None:
        self._send = send
        self._recheck = recheck
        self._serving = serving
        self._since = since
        self._extra_files = list(extra_files)
        self._exclude = list(exclude)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grace-watch-report", daemon=True)

    def start(self) -> None:
        """The generation is ready: report now, then whenever it imports more. Does not
        block."""
        self._thread.start()

    def stop(self) -> None:
        """The generation drains: no more reports (its code is no longer the one served)."""
        self._stopped.set()

    def tried(self, exc: BaseException | None) -> None:
        """The app failed to load: report what it tried. Never raises (the failure is what
        the user must see)."""
        try:
            spec = tried_spec(
                exc, self._since, extra_files=self._extra_files, exclude=self._exclude
            )
            self._send(watch_message(spec.encode()))
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    def _run(self) -> None:
        sent: WatchSpec | None = None
        seen = -1
        while not self._stopped.is_set():
            if len(sys.modules) != seen:
                seen = len(sys.modules)
                try:
                    spec = self._serving(self._since)
                except Exception:  # a reloader's list that fails must not touch serving
                    traceback.print_exc()
                    return
                if spec != sent and not self._stopped.is_set():
                    self._send(watch_message(spec.encode()))
                    sent = spec
            self._stopped.wait(self._recheck)
