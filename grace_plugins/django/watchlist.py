"""What ``runserver`` would watch in this generation, for the supervisor's watcher.

Django's autoreloader watches every imported module's file
(``django.utils.autoreload.iter_all_python_module_files``, the files that failed to import
included) and what the ``autoreload_started`` receivers add: template directories
(``watch_dir(directory, "**/*")``), locale directories (``"**/*.mo"``), a project's own
``watch_dir`` globs and ``extra_files``. Here the receivers are sent a :class:`Recorder`, a
reloader that never runs, so what they ask for is recorded, once per generation, after the app
is loaded (as Django's reloader sends the signal once the apps are ready and the URLconf is
imported). The Python files beside the project's modules are watched too: a module whose
import failed and was caught is in no list, and it is the file a developer is fixing.
"""

from __future__ import annotations

import contextlib
import logging
import os

from django.utils import autoreload

from grace_plugins.loaded import project_dirs
from grace_plugins.watchspec import WatchSpec

logger = logging.getLogger("django.utils.autoreload")


class Recorder(autoreload.BaseReloader):
    """Stands where ``runserver``'s reloader stands when ``autoreload_started`` is sent:
    receivers call :meth:`watch_dir` and add to ``extra_files``; nothing watches."""


class Watchlist:
    """This generation's watched files; the receivers run at the first :meth:`spec` only."""

    def __init__(self) -> None:
        self._recorder: Recorder | None = None

    def spec(self, since: float | None) -> WatchSpec:
        """What ``runserver`` would watch now; *since* is when the generation began loading
        (``time.time()``). Call it once the app is loaded (and again after more modules were
        imported: the module list is read each time)."""
        recorder = self._recorder or self._record()
        files = {str(path) for path in autoreload.iter_all_python_module_files()}
        files.update(os.path.abspath(str(path)) for path in recorder.extra_files)
        dirs = [
            (str(path), glob) for path, globs in recorder.directory_globs.items() for glob in globs
        ]
        # and the Python files beside the project's modules: a module whose import failed (an
        # optional one, caught) is not imported, and it is the file a developer is fixing
        dirs += [(d, "*.py") for d in sorted(project_dirs(files))]
        return WatchSpec.build(files, dirs, (), since)

    def _record(self) -> Recorder:
        from django.urls import get_resolver

        # As Django's reloader does: the URLconf's modules are imported, so watched. A broken
        # URLconf is the ready check's business, not the watcher's.
        with contextlib.suppress(Exception):
            _ = get_resolver().urlconf_module
        recorder = Recorder()
        for receiver, result in autoreload.autoreload_started.send_robust(sender=recorder):
            if isinstance(result, Exception):
                logger.warning(
                    "The autoreload_started receiver %s failed (%s: %s): what it would watch"
                    " is not watched.",
                    getattr(receiver, "__qualname__", receiver),
                    type(result).__name__,
                    result,
                )
        self._recorder = recorder
        return recorder
