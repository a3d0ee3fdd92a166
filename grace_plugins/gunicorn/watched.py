"""What the master's file watcher watches with ``--reload``: what the workers loaded.

The master never imports the app, so the workers say what gunicorn's reloader would watch
(:mod:`grace_plugins.gunicorn.watchlist`): each worker once it is ready (and again when it
imported more), and a worker whose app failed to load what it tried (the module that broke it
is the file a developer fixes next). They record it in the record directory; the master's
lookout thread reads it (:class:`SpecReader`) and watches the serving generation's files plus
what the generations after it tried (:func:`to_watch`, pure), as the core's supervisor does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from grace_plugins.gunicorn.records import RecordStore
from grace_plugins.watchspec import SpecError, WatchSpec


def to_watch(
    specs: Mapping[int, Sequence[WatchSpec]], promoted: Iterable[int]
) -> tuple[WatchSpec, str] | None:
    """The specs of the newest promoted generation and of every later one, merged (oldest
    first: the newest's ``since`` wins), and whose they are (for the log); every generation's
    when none was promoted yet. ``None`` when there is nothing to watch."""
    base = max(promoted, default=0)
    merged: WatchSpec | None = None
    gens = sorted(g for g in specs if g >= base and specs[g])
    for gen in gens:
        for spec in specs[gen]:
            merged = spec if merged is None else merged.merged(spec)
    if merged is None:
        return None
    what = f"what generation {gens[0]} loaded"
    if len(gens) > 1:
        what += f" and generation {', '.join(map(str, gens[1:]))} tried"
    return merged, what


class SpecReader:
    """Reads the workers' specs from the record directory, each file once per change."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._seen: dict[str, tuple[int, float, WatchSpec | None]] = {}
        self.problem = ""  # the last spec that could not be read, said once by the caller

    def specs(self) -> dict[int, list[WatchSpec]]:
        """{generation: its workers' specs} as recorded now (reads only what changed)."""
        stamps = self.store.spec_stamps()
        for name, (gen, mtime) in stamps.items():
            seen = self._seen.get(name)
            if seen is not None and seen[1] == mtime:
                continue
            self._seen[name] = (gen, mtime, self._decode(name))
        self._seen = {name: seen for name, seen in self._seen.items() if name in stamps}
        found: dict[int, list[WatchSpec]] = {}
        for gen, _, spec in self._seen.values():
            if spec is not None:
                found.setdefault(gen, []).append(spec)
        return found

    def _decode(self, name: str) -> WatchSpec | None:
        text = self.store.read_spec(name)
        if not text:
            return None
        try:
            return WatchSpec.decode(text)
        except SpecError as exc:
            self.problem = str(exc)
            return None
