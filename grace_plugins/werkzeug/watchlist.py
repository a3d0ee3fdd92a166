"""What werkzeug's reloader would watch in this generation, for the supervisor's watcher.

Werkzeug's stat reloader (``_find_stat_paths``) watches the files of the imported modules (less
the interpreter's own installation), the Python files under every ``sys.path`` entry outside
the installed environment (the project: a module whose import failed is not imported, and it is
the very file a developer is about to fix), and the ``extra_files`` (a directory there stands
for the Python files below it), all less what ``exclude_patterns`` match. Here that list is
computed once the generation serves, in the generation (the supervisor imports no project
code), and sent as a :class:`~grace_plugins.watchspec.WatchSpec`: the project's directories as
``**/*.py`` globs, so that a module created later counts too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from werkzeug import _reloader

from grace_plugins.loaded import PYTHON_FILES, extra_entries
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
    dirs += [(path, PYTHON_FILES) for path in project_entries()]
    return WatchSpec.build(files, dirs, exclude_patterns or (), since)


def project_entries() -> list[str]:
    """The ``sys.path`` directories werkzeug's stat reloader scans: those outside the
    interpreter's and the virtual environment's installation."""
    found = []
    for entry in dict.fromkeys(os.path.abspath(p) for p in sys.path):
        if os.path.isdir(entry) and not entry.startswith(_reloader._stat_ignore_scan):
            found.append(entry)
    return found
