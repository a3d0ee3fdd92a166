"""What the supervisor's file watcher watches, what counts as a change, and when a save is over.

Pure: no file system access, no clock (the caller passes *now*), so that every rule is tested
without a file or a process (``tests/unit/test_watchspec.py``).

* :class:`WatchSpec` is what a generation reports it loaded: files (its modules, extra files),
  directories with a glob (Django's ``watch_dir(path, glob)``: templates, locale), exclude
  patterns (werkzeug's ``exclude_patterns``) and ``since``, when it began loading. It travels
  from the generation to the supervisor as one versioned JSON line (:meth:`WatchSpec.encode`).
* :class:`Matcher` says which changed paths count: a file nothing loaded changes nothing.
* :func:`catch_up` picks the watched files saved since the generation began loading: its
  watches were set after that, and a save in between must not be lost.

When a save is over (a burst of events is one batch) is :mod:`grace_plugins.debounce`'s.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: The version of the encoded spec; a supervisor refuses a newer one with a clear message.
SPEC_VERSION = 1
#: A file's mtime comes from a coarse clock (one kernel tick, up to 10 ms, behind
#: ``time.time()``): a save made just after a load began can carry an mtime just before it.
SINCE_SLACK = 0.02
#: Names inside a watched directory that are an editor's scratch files, never content: vim's
#: swap files and its ``4913`` probe, backups (``x~``), Emacs locks and autosaves, JetBrains'
#: safe-write temporaries, the temporary file of an atomic save (``x.tmp``, gedit's), macOS'
#: folder metadata.
SCRATCH_NAME = re.compile(
    r"\.sw[a-p]$|~$|^\.#|^#.*#$|___jb_(tmp|old|bak)___$|^4913$|\.tmp$|^\.goutputstream-"
    r"|^\.DS_Store$|^flycheck_"
)
#: Directories inside a watched directory that hold no source: caches and version control.
SCRATCH_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".mypy_cache", ".pytest_cache"}
)


class SpecError(ValueError):
    """An encoded spec that cannot be read (the message is one line: what, then what to do)."""


@dataclass(frozen=True, order=True)
class DirGlob:
    """Files under *path* matching *glob* (``pathlib`` syntax: ``**`` spans directories)."""

    path: str
    glob: str

    @property
    def recursive(self) -> bool:
        """Whether the glob reaches below *path* (it has a ``**`` or a ``/``)."""
        return "/" in self.glob or "**" in self.glob


@dataclass(frozen=True)
class WatchSpec:
    """What one generation loaded: the files and directories whose change means new code."""

    files: frozenset[str] = frozenset()
    dirs: frozenset[DirGlob] = frozenset()
    exclude: tuple[str, ...] = ()
    #: When the generation began loading (``time.time()``), or ``None``: no catch-up.
    since: float | None = None

    @classmethod
    def build(
        cls,
        files: Iterable[str] = (),
        dirs: Iterable[tuple[str, str]] = (),
        exclude: Iterable[str] = (),
        since: float | None = None,
    ) -> WatchSpec:
        """A spec from absolute paths, normalised; files matching *exclude* are left out
        (werkzeug's ``exclude_patterns``: :func:`fnmatch.fnmatch` on the whole path)."""
        patterns = tuple(dict.fromkeys(exclude))
        kept = {os.path.normpath(f) for f in files if f}
        return cls(
            files=frozenset(f for f in kept if not excluded(f, patterns)),
            dirs=frozenset(DirGlob(os.path.normpath(p), g) for p, g in dirs if p and g),
            exclude=patterns,
            since=since,
        )

    def merged(self, newer: WatchSpec) -> WatchSpec:
        """Both specs' files and directories, with *newer*'s ``since`` and exclusions: what
        the serving generation loaded plus what a failed one tried."""
        return WatchSpec(
            files=self.files | newer.files,
            dirs=self.dirs | newer.dirs,
            exclude=newer.exclude,
            since=newer.since,
        )

    def directories(self) -> dict[str, bool]:
        """{directory to watch: whether its subdirectories matter too}: the parent of every
        file, and every glob's directory."""
        found = {os.path.dirname(f): False for f in self.files}
        for one in self.dirs:
            found[one.path] = found.get(one.path, False) or one.recursive
        return found

    def encode(self) -> str:
        """One line of ASCII JSON (files grouped by directory: a few kB for a thousand)."""
        grouped: dict[str, list[str]] = {}
        for path in sorted(self.files):
            head, tail = os.path.split(path)
            grouped.setdefault(head, []).append(tail)
        data = {
            "v": SPEC_VERSION,
            "files": grouped,
            "dirs": [[d.path, d.glob] for d in sorted(self.dirs)],
            "exclude": list(self.exclude),
            "since": self.since,
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def decode(cls, text: str) -> WatchSpec:
        """Read :meth:`encode`'s line. Raises :class:`SpecError` (one line) when it is not a
        spec, or a newer version than this grace_plugins reads."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"watch spec is not JSON ({exc}); report this bug") from None
        if not isinstance(data, dict) or not isinstance(data.get("v"), int):
            raise SpecError("watch spec has no version; report this bug")
        if data["v"] > SPEC_VERSION:
            raise SpecError(
                f"watch spec version {data['v']} is newer than this grace_plugins reads"
                f" ({SPEC_VERSION}): restart the server after upgrading grace_plugins"
            )
        try:
            files = [
                os.path.join(_text(head), _text(name))
                for head, names in dict(data.get("files", {})).items()
                for name in names
            ]
            dirs = [(_text(p), _text(g)) for p, g in data.get("dirs", [])]
            exclude = [_text(p) for p in data.get("exclude", [])]
            since = data.get("since")
            if since is not None and not isinstance(since, int | float):
                raise TypeError("since")
        except (TypeError, ValueError) as exc:
            raise SpecError(f"watch spec is malformed ({exc}); report this bug") from None
        return cls.build(files, dirs, exclude, None if since is None else float(since))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """Whether an exclude pattern (werkzeug's: :func:`fnmatch.fnmatch` on the whole path, ``*``
    spanning directories) matches *path*."""
    return any(fnmatch.fnmatch(path, p) for p in patterns)


# -- what counts ---------------------------------------------------------------------------------
def glob_regex(glob: str) -> re.Pattern[str]:
    """A regex for paths relative to a directory that ``Path(directory).glob(glob)`` yields:
    ``*``, ``?`` and ``[...]`` stay within one name, a ``**`` part spans any directories."""
    regex = ""
    parts = glob.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _name_regex(part) + ("" if last else "/")
    return re.compile(regex + r"\Z")


def split_glob(pattern: str) -> tuple[str, str]:
    """(directory, glob) for a file pattern such as gunicorn's ``--reload-extra-file
    'templates/**/*.html'``: the leading names without ``*``, ``?`` or ``[``, then the rest."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not is_glob(parts[fixed]):
        fixed += 1
    return "/".join(parts[:fixed]) or "/", "/".join(parts[fixed:])


def is_glob(pattern: str) -> bool:
    """Whether *pattern* holds a ``*``, ``?`` or ``[`` (gunicorn's test for a pattern)."""
    return any(char in pattern for char in "*?[")


def _name_regex(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        char = part[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in part[i + 2 :]:
            end = part.index("]", i + 2)
            body = part[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + re.sub(r"([\\\[&~|])", r"\\\1", body) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


class Matcher:
    """Which changed paths count for a spec. *aliases* maps a path the file system reports
    (a symlinked module's real file) to the path the spec names."""

    def __init__(self, spec: WatchSpec, aliases: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.aliases = dict(aliases or {})
        self._globs = [
            (d.path.rstrip(os.sep) + os.sep, glob_regex(d.glob)) for d in sorted(spec.dirs)
        ]

    def match(self, path: str) -> str | None:
        """The spec's name for *path* if a change of it counts, else ``None``."""
        path = os.path.normpath(path)
        path = self.aliases.get(path, path)
        if excluded(path, self.spec.exclude):
            return None
        if path in self.spec.files:
            return path
        for prefix, regex in self._globs:
            if path.startswith(prefix) and self._in_glob(path[len(prefix) :], regex):
                return path
        return None

    def changed(self, paths: Iterable[str]) -> list[str]:
        """The spec's names of the *paths* whose change counts, sorted, once each."""
        return sorted({m for m in map(self.match, paths) if m is not None})

    @staticmethod
    def _in_glob(relative: str, regex: re.Pattern[str]) -> bool:
        parts = relative.split(os.sep)
        if SCRATCH_NAME.search(parts[-1]) or SCRATCH_DIRS.intersection(parts[:-1]):
            return False
        return regex.match("/".join(parts)) is not None


def catch_up(
    spec: WatchSpec,
    mtimes: Mapping[str, float | None],
    reported: Mapping[str, float],
    now: float,
) -> list[str]:
    """The files of *mtimes* (path: mtime, ``None`` if gone) saved since ``spec.since`` and
    not in the future (a file dated tomorrow must not upgrade on every load), except those
    already reported at that very mtime (*reported*: path: mtime when reported)."""
    if spec.since is None:
        return []
    low, high = spec.since - SINCE_SLACK, now + SINCE_SLACK
    return sorted(
        path
        for path, mtime in mtimes.items()
        if mtime is not None and low <= mtime <= high and reported.get(path) != mtime
    )
