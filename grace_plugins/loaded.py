"""What this process loaded, as the supervisor's watcher needs it: framework-free.

The adapters build the serving generation's :class:`~grace_plugins.watchspec.WatchSpec` from
what their framework's reloader would watch (``grace_plugins.werkzeug.watchlist``,
``grace_plugins.django.watchlist``). A generation whose app failed to import has no app to ask:
:func:`tried_spec` names what it tried, so that the fix of the broken module is heard (the trap
of a watcher that catches up only on imported modules: the module whose import failed is not in
``sys.modules``, and it is the very file a developer is fixing).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from grace_plugins.preload import is_installed, stdlib_dirs
from grace_plugins.watchspec import WatchSpec

#: The glob a directory named in ``extra_files`` is watched with (werkzeug's stat loop scans
#: such a directory for Python files).
PYTHON_FILES = "**/*.py"
#: Our own package: never the project's, even installed editable inside the project.
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def module_files(modules: Iterable[object] | None = None) -> set[str]:
    """The files of the loaded modules (of *modules*, default ``sys.modules``); a module
    imported from a zip archive counts as the archive."""
    found: set[str] = set()
    for module in list(sys.modules.values()) if modules is None else modules:
        name = getattr(module, "__file__", None)
        if not isinstance(name, str) or not name:
            continue
        name = os.path.abspath(name)
        while not os.path.isfile(name):
            parent = os.path.dirname(name)
            if parent == name:
                break
            name = parent
        else:
            found.add(name)
    return found


def extra_entries(extra_files: Iterable[str]) -> tuple[set[str], list[tuple[str, str]]]:
    """werkzeug's ``extra_files``: (files, (directory, glob) pairs); a directory named there
    stands for the Python files below it."""
    files: set[str] = set()
    dirs: list[tuple[str, str]] = []
    for extra in extra_files:
        path = os.path.abspath(extra)
        if os.path.isdir(path):
            dirs.append((path, PYTHON_FILES))
        else:
            files.add(path)
    return files, dirs


def traceback_files(exc: BaseException | None) -> set[str]:
    """The files an exception went through: its traceback's frames (and those of its causes),
    and a ``SyntaxError``'s file, which no frame names."""
    found: set[str] = set()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 32:
        seen.add(id(exc))
        filename = getattr(exc, "filename", None) if isinstance(exc, SyntaxError) else None
        names = [filename] if isinstance(filename, str) else []
        tb = exc.__traceback__
        while tb is not None:
            names.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        found.update(os.path.abspath(n) for n in names if n and os.path.isfile(n))
        exc = exc.__cause__ or exc.__context__
    return found


def project_dirs(files: Iterable[str], library: Iterable[str] | None = None) -> set[str]:
    """The directories of *files* outside the installed environment (the standard library,
    site-packages) and outside grace_plugins: the project's."""
    stdlib = list(stdlib_dirs() if library is None else library)
    dirs = {os.path.dirname(os.path.normpath(f)) for f in files}
    return {
        d
        for d in dirs
        if not is_installed(d, stdlib) and not (d + os.sep).startswith(_OWN_DIR + os.sep)
    }


def tried_spec(
    exc: BaseException | None,
    since: float | None,
    *,
    extra_files: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> WatchSpec:
    """What a generation whose app failed to load tried: the modules it had loaded, the
    files its exception went through, the extra files, and any Python file in the project's
    directories among them (a module created or fixed there)."""
    files, dirs = extra_entries(extra_files)
    files |= module_files() | traceback_files(exc)
    dirs += [(d, "*.py") for d in sorted(project_dirs(files))]
    return WatchSpec.build(files, dirs, exclude, since)
