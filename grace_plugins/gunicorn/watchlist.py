"""What gunicorn's ``--reload`` would watch in this generation, for the supervisor's watcher.

Gunicorn's reloaders watch every loaded module's source file (a ``.pyc`` stands for its
``.py``) and ``--reload-extra-file`` entries, of which those holding ``*``, ``?`` or ``[`` are
glob patterns (expanded at every look, so that files created later count too: here a directory
and a glob, :func:`~grace_plugins.watchspec.split_glob`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from grace_plugins.watchspec import WatchSpec, is_glob, split_glob

_COMPILED = re.compile(r"py[co]$")


def serving_spec(extra_files: Iterable[str] | None, since: float | None) -> WatchSpec:
    """The spec of this generation: what gunicorn's reloader would watch now. *since* is when
    the generation began loading (``time.time()``)."""
    files = {
        os.path.abspath(_COMPILED.sub("py", name))
        for module in tuple(sys.modules.values())
        if isinstance(name := getattr(module, "__file__", None), str) and name
    }
    dirs = []
    for entry in extra_files or ():
        path = os.path.abspath(entry)
        if is_glob(entry):
            dirs.append(split_glob(path))
        else:
            files.add(path)
    return WatchSpec.build(files, dirs, (), since)
