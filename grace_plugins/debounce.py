"""When a save is over: a burst of changes (an editor's safe write: temp file, rename, chmod;
a ``git checkout`` of many files) is one batch.

Pure: no file system access, no clock (the caller passes *now*), tested with a fake clock in
``tests/unit/test_watchspec.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: A burst is over once no change came for this long (s)...
QUIET = 0.005
#: ...or this long after its first change, however busy the files stay (s).
LONGEST = 0.5


@dataclass(frozen=True)
class Batch:
    """The changed paths of one save (or of several, if taken together), and when the watcher
    saw the first of them and when it decided the save was over (``time.monotonic()``)."""

    paths: tuple[str, ...] = ()
    first: float = 0.0
    ready: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.paths)

    def __add__(self, later: Batch) -> Batch:
        if not self:
            return later
        if not later:
            return self
        return Batch(
            tuple(sorted(set(self.paths) | set(later.paths))),
            min(self.first, later.first),
            max(self.ready, later.ready),
        )


@dataclass
class Debounce:
    """A burst of changes is one batch: due once no change came for *quiet* s, no changed file
    is still open for writing (an editor's ``fsync`` before the close can take longer than
    *quiet*) and none is missing (vim renames the file away, then writes it anew: on a busy
    machine the two can be more than *quiet* apart, and a new generation started in between
    would not find the module), or *longest* s after the burst's first change, whatever
    happens (a file really deleted). A file whose metadata alone changes (``os.utime`` or a
    chmod after the rename that saved it) up to *longest* s after its batch was due is part of
    that save, however busy the machine was between the two: not a new batch; a ``touch``
    later than that is a save."""

    quiet: float = QUIET
    longest: float = LONGEST
    _paths: set[str] = field(default_factory=set)
    _writing: set[str] = field(default_factory=set)
    _missing: set[str] = field(default_factory=set)
    _first: float | None = None
    _last: float = 0.0
    _due_at: dict[str, float] = field(default_factory=dict)  # path: when its last batch was due

    def add(
        self,
        paths: Iterable[str],
        now: float,
        writing: Iterable[str] = (),
        closed: Iterable[str] = (),
        missing: Iterable[str] = (),
        touched: Iterable[str] = (),
    ) -> None:
        """Changes seen at *now*; of them, *writing* are still open for writing, *closed* were
        closed by their writer, *missing* do not exist now (the others do: a missing file
        that reappears no longer holds the batch), and only the metadata of *touched* changed.
        Nothing happens for an empty *paths*."""
        recent = {p for p, due in self._due_at.items() if now - due <= self.longest}
        paths = set(paths) - (recent & set(touched))
        if not paths:
            return
        self._paths |= paths
        self._writing = (self._writing | set(writing)) - set(closed)
        self._missing = (self._missing | set(missing)) - (paths - set(missing))
        if self._first is None:
            self._first = now
        self._last = now

    def wait(self, now: float) -> float | None:
        """Seconds until the pending batch is due (0 if it is), ``None`` if none is pending."""
        if self._first is None:
            return None
        deadline = self._first + self.longest
        if not self._writing and not self._missing:
            deadline = min(deadline, self._last + self.quiet)
        return max(0.0, deadline - now)

    def due(self, now: float) -> Batch:
        """The batch, if due at *now* (it is then forgotten here); else an empty batch."""
        left = self.wait(now)
        if left is None or left > 0 or self._first is None:
            return Batch()
        batch = Batch(tuple(sorted(self._paths)), self._first, now)
        self._paths, self._writing, self._missing, self._first = set(), set(), set(), None
        self._due_at = {p: due for p, due in self._due_at.items() if now - due <= self.longest}
        self._due_at.update((path, now) for path in batch.paths)
        return batch
