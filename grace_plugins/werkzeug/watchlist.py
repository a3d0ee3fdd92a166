"""What werkzeug's reloader would watch in this generation, for the supervisor's watcher.

Werkzeug's reloaders watch the files of the imported modules (less the interpreter's own
installation: ``werkzeug._reloader._iter_module_paths``), the ``extra_files`` (a directory there
stands for the Python files below it), all less what ``exclude_patterns`` match. Here that list
is computed once the generation serves, in the generation (the supervisor imports no project
code), and sent as a :class:`~grace_plugins.watchspec.WatchSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable

from werkzeug import _reloader

from grace_plugins.loaded import extra_entries
from grace_plugins.watchspec import WatchSpec


def serving_spec(
    extra_files: Iterable[str] | None,
    exclude_patterns: Iterable[str] | None,
    since: float | None,
) -> WatchSpec:
    """The spec of this generation: what werkzeug's reloader would watch now. *since* is when
    the generation began loading (``time.time()``)."""
    files, dirs = extra_entries(extra_files or ())
    files.update(_reloader._iter_module_paths())
    return WatchSpec.build(files, dirs, exclude_patterns or (), since)
