"""Which modules a warm-start template may import: everything but the project's own.

"The project's own" is decided here, in pure functions, so that the rule is tested without a
process and is the same in the template and in its checks. A module is the project's own when
its file is under one of the project's *roots* (the working directory, the script's directory
(``manage.py``'s, say), and every ``sys.path`` entry the program added at run time, such as
the directory ``flask --app path/app.py`` inserts), unless that file is inside an installed
environment (a ``site-packages`` or ``dist-packages`` directory, or the standard library).
``__main__`` is always the project's own. Everything else (the standard library, installed
packages, a module on ``PYTHONPATH`` outside the project, a ``pip install -e`` sibling) is
preloaded, and watched: its file changing on disk rebuilds the template.

A serving generation reports its modules with :func:`write_report` (a small JSON file in the
private state directory, named by supervisor pid, written ``0600`` by rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grace_plugins.atomic import write_atomic

REPORT_VERSION = 1
#: Module names that are never preloaded, whatever their file.
ALWAYS_PROJECT = frozenset({"__main__", "__mp_main__"})
#: Packages never the project's own, wherever their files are: grace_plugins (the template runs
#: it; an editable install inside the working directory must not make it "project" code).
NEVER_PROJECT = ("grace_plugins",)
_INSTALLED_PARTS = frozenset({"site-packages", "dist-packages"})

#: (mtime in ns, size) of a file, or None when it is gone.
Stamp = tuple[int, int] | None
Read = tuple[Stamp, str]  # a file a library read while imported: its stamp then, its reader
_KERNEL = ("/proc/", "/sys/", "/dev/")  # the kernel's (/proc/self/... per process): no config


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _under(path: str, root: str) -> bool:
    root = _norm(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def project_roots(
    cwd: str,
    script_dir: str | None,
    generation_path: Sequence[str],
    base_path: Sequence[str],
    generation_cwd: str = "",
) -> list[str]:
    """The directories whose modules are the project's own.

    *base_path* is the ``sys.path`` of a fresh interpreter with the same flags and environment
    (the standard library, ``PYTHONPATH``, site-packages and what ``.pth`` files add); entries
    of the generation's *generation_path* beyond it were added by the program itself (the
    script's directory, the app's directory) and are the project's. Relative entries are
    relative to *cwd*. *generation_cwd* is the directory the generation found itself in: the
    physical one, where *cwd* may name it through a symlink (its modules' files say it so).
    """
    base = {_norm(os.path.join(cwd, p)) for p in base_path if p}
    roots = [_norm(cwd)]
    if generation_cwd and _norm(generation_cwd) not in roots:
        roots.append(_norm(generation_cwd))
    if script_dir:
        roots.append(_norm(os.path.join(cwd, script_dir)))
    for entry in generation_path:
        path = _norm(os.path.join(cwd, entry or "."))
        if path not in base and path not in roots:
            roots.append(path)
    return roots


def is_installed(path: str, stdlib_dirs: Iterable[str]) -> bool:
    """Whether *path* (normalised, absolute) belongs to an installed environment."""
    if _INSTALLED_PARTS.intersection(path.split(os.sep)):
        return True
    return any(_under(path, d) for d in stdlib_dirs if d)


def is_project_module(
    name: str, origin: str | None, roots: Sequence[str], stdlib_dirs: Iterable[str]
) -> bool:
    """Whether module *name*, loaded from *origin* (its file, or its package directory for a
    namespace package; ``None`` for built-in modules), is the project's own."""
    if name in ALWAYS_PROJECT:
        return True
    if name.partition(".")[0] in NEVER_PROJECT:
        return False
    if not origin or not os.path.isabs(origin):
        return False
    return is_project_file(origin, roots, stdlib_dirs)


def is_project_file(path: str, roots: Sequence[str], stdlib_dirs: Iterable[str]) -> bool:
    """Whether *path* (absolute) is under a project root and not in an installed environment."""
    path = _norm(path)
    if is_installed(path, stdlib_dirs):
        return False
    return any(_under(path, root) for root in roots)


def split_modules(
    modules: Sequence[tuple[str, str | None]],
    roots: Sequence[str],
    stdlib_dirs: Iterable[str],
) -> tuple[list[str], list[str]]:
    """Split a generation's modules into (preload, project), keeping their import order.

    A submodule of a project package is the project's too, wherever its file is.
    """
    stdlib = list(stdlib_dirs)
    preload: list[str] = []
    project: list[str] = []
    own: set[str] = set()
    for name, origin in modules:
        parent = name.rpartition(".")[0]
        if (parent and parent in own) or is_project_module(name, origin, roots, stdlib):
            own.add(name)
            project.append(name)
        else:
            preload.append(name)
    return preload, project


def file_read(
    file: object, mode: str, roots: Sequence[str], stdlib_dirs: Iterable[str]
) -> tuple[str, bool]:
    """(path, is the project's) of a file opened with *mode*; none: written, installed, kernel's."""
    if not isinstance(file, str | bytes | os.PathLike) or set(mode) & set("wax+"):
        return "", False
    path = _norm(os.path.abspath(os.fsdecode(file)))
    if path.startswith(_KERNEL) or not os.path.isfile(path) or is_installed(path, stdlib_dirs):
        return "", False
    return path, is_project_file(path, roots, stdlib_dirs)


def changed_files(recorded: Mapping[str, Stamp], current: Mapping[str, Stamp]) -> list[str]:
    """The files of *recorded* whose stamp in *current* differs (changed, replaced or gone)."""
    return [path for path, stamp in recorded.items() if current.get(path) != stamp]


def stamp(path: str) -> Stamp:
    """(mtime ns, size) of *path*, or ``None`` if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


def stdlib_dirs() -> list[str]:
    """The standard library directories of this interpreter and of its base installation."""
    import sysconfig

    dirs: set[str] = set()
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        for key in ("stdlib", "platstdlib"):
            with contextlib.suppress(KeyError, ValueError):
                path = sysconfig.get_path(key, vars={"base": prefix, "platbase": prefix})
                if path:
                    dirs.add(_norm(path))
    return sorted(dirs)


# -- what the template leaves to the generations ---------------------------------------------
#: Why a top-level import is left to the generations: one short phrase each (the start line).
SETTINGS = "reads the project's settings"
THREAD = "starts a thread"
SOCKET = "opens a socket"
OPEN_FILE = "keeps a file open"
PROJECT_FILE = "reads a project file"


@dataclass(frozen=True)
class LeftOut:
    """A top-level preload import left to the generations, and why."""

    name: str  # what the template tried to import
    culprit: str  # the module whose import did it: *name*, or one *name* imports
    reason: str  # one of the phrases above, "imports the project's X" or "fails to import (E)"


#: What a seed says its template left out: ``{name: (culprit, reason, when the seed was
#: written, ns)}`` (:func:`still_left` decides which are not tried again).
SeedLeft = dict[str, tuple[str, str, int]]


def left_in(report: Mapping[str, Any], path: str) -> SeedLeft:
    """What a seed (a kept report, read from *path*) says its template left out."""
    written = (stamp(path) or (0, 0))[0]
    return {str(n): (str(c), str(r), written) for n, c, r in report.get("left", [])}


def left_in_file(seed: str | None) -> SeedLeft:
    """:func:`left_in` the seed file *seed*; nothing when it cannot be read (a first run)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        if seed:
            with open(seed) as handle:
                return left_in(json.load(handle), seed)
    return {}


def still_left(left: SeedLeft, origins: Mapping[str, str | None]) -> dict[str, tuple[str, str]]:
    """Of what a seed says its template left out, what is not worth trying again: not an
    import that failed (what was missing may be installed now), and neither the module's file
    nor its culprit's (*origins*: by module name) changed since the seed was written (an
    upgraded library may no longer read the settings at import)."""

    def changed(name: str, written: int) -> bool:
        origin = origins.get(name)
        if not origin or not os.path.isabs(origin):
            return False
        try:
            info = os.stat(origin)
        except OSError:
            return True
        # the change time too: an installer that links or clones a cached file keeps its mtime
        return max(info.st_mtime_ns, info.st_ctime_ns) > written

    return {
        name: (culprit, reason)
        for name, (culprit, reason, written) in left.items()
        if not reason.startswith(FAILED)
        and not changed(name, written)
        and not changed(culprit, written)
    }


#: A template leaving out at least this many top-level imports, and more than this share of those
#: it tried, is a poor bet for a first generation held for it (:func:`poor_bet`). A generated
#: CMS site leaves out 478 of 895; a site with every contrib app 30 of 243, and its first
#: generation, forked, is ready sooner and 14 MB smaller than a cold one.
POOR_LEFT = 50
POOR_SHARE = 0.20


def poor_bet(left: int, tried: int) -> bool:
    """Whether a template that left out *left* of the *tried* top-level imports so far is a
    poor bet for the first generation held for it: on a site whose libraries mostly read its
    settings (a CMS), the template tries and undoes hundreds of imports, then the generation
    imports them again. Started cold at once, it runs beside the template instead (on another
    core) and is ready in a cold start's time; the upgrades are forked from the template."""
    return left >= POOR_LEFT and left > POOR_SHARE * tried


def project_reason(name: str, settings_module: str | None) -> str:
    """Why importing project module *name* is refused: reading the settings (Django's lazy
    settings import the project's settings module, package first), or importing project code."""
    if settings_module and (settings_module == name or settings_module.startswith(name + ".")):
        return SETTINGS
    return f"imports the project's {name}"


#: How :func:`failure_reason` begins.
FAILED = "fails to import"


def failure_reason(error: BaseException) -> str:
    return f"{FAILED} ({type(error).__name__})"


def summarize(left: Sequence[LeftOut], shown: int = 3) -> str:
    """The start line's account of what was left out: the top-level imports counted, grouped
    by reason, each with the first *shown* culprits (a short list, never a traceback)."""
    if not left:
        return "nothing left to the generations"
    culprits: dict[str, list[str]] = {}
    for one in left:
        named = culprits.setdefault(one.reason, [])
        if one.culprit not in named:
            named.append(one.culprit)
    groups = []
    for reason, named in culprits.items():
        more = f" and {len(named) - shown} more" if len(named) > shown else ""
        groups.append(f"{reason}: {', '.join(named[:shown])}{more}")
    count = f"{len(left)} import{'s' if len(left) != 1 else ''}"
    return f"left to the generations: {count} ({'; '.join(groups)})"


# -- the generation's report ----------------------------------------------------------------------
def module_origin(module: object) -> str | None:
    """The file a module came from (a namespace package: its first directory). Read from the
    module's namespace: a lazy module's ``__getattr__`` must not run (it may import the
    project, or anything)."""
    try:
        namespace = vars(module)
    except TypeError:
        return None
    origin = namespace.get("__file__")
    if isinstance(origin, str):
        return origin
    path = namespace.get("__path__")
    with contextlib.suppress(TypeError, IndexError):
        first = list(path)[0] if path is not None else None
        if isinstance(first, str):
            return first
    return None


def report_path(supervisor_pid: int) -> str:
    """Where the generations of supervisor *supervisor_pid* report their modules."""
    from grace_plugins.state import state_dir

    return os.path.join(state_dir(), f"warm-{supervisor_pid}.json")


def write_report(supervisor_pid: int) -> None:
    """Record this generation's modules for the supervisor's warm-start template.

    Only when the supervisor asked for it (it created the file); never raises: warm start is
    an optimisation, a failure here must not touch the generation.
    """
    try:
        path = report_path(supervisor_pid)
        if not os.path.exists(path):
            return
        write_atomic(path, json.dumps(module_report(), separators=(",", ":")))
    except Exception:  # noqa: BLE001 - see the docstring
        return


def module_report() -> dict[str, Any]:
    """This process's modules (name and file), ``sys.path`` and working directory: what a
    template preloads from (:mod:`grace_plugins.template`)."""
    return {
        "v": REPORT_VERSION,
        "modules": [[name, module_origin(m)] for name, m in list(sys.modules.items())],
        "path": list(sys.path),
        "cwd": os.getcwd(),
    }


def warm_metadata() -> None:
    """Fill ``importlib.metadata``'s own caches of what each ``sys.path`` directory holds (kept
    per directory modification time: a package installed later is still found), so that a
    generation that lists entry points, as flask's command line does at every start, does not
    list every directory first."""
    metadata = sys.modules.get("importlib.metadata")
    if metadata is not None:
        with contextlib.suppress(Exception):
            for _ in metadata.distributions():
                pass
