"""What the file watcher watches: a pure part of the supervisor's rules.

The supervisor imports no project code, so the generations say what they loaded (a
:class:`~grace_plugins.watchspec.WatchSpec`): the serving generation once it is ready (and
again when it imports more), a generation that fails before it is ready what it tried (the
module whose import failed is the file a developer is about to fix). The watcher watches the
serving generation's files plus what failed generations tried since it took over.
"""

from __future__ import annotations

from grace_plugins import actions as act
from grace_plugins.actions import Action
from grace_plugins.generations import Generations
from grace_plugins.watchspec import WatchSpec


class WatchRules:
    """The serving generation's spec and what failed generations tried since."""

    def __init__(self) -> None:
        self.serving: WatchSpec | None = None
        self.tried: WatchSpec | None = None
        self._problem_said = False

    def report(self, event: act.WatchReport, gens: Generations) -> list[Action]:
        """Generation ``event.number`` reported: the serving one what it loaded, the starting
        one what it tried before it failed (a draining one's report is old news)."""
        if event.spec is None:
            if self._problem_said:
                return []
            self._problem_said = True
            return [
                act.warning("the file watcher cannot use a generation's report: %s", event.problem)
            ]
        if gens.current is not None and event.number == gens.current.number:
            self.serving, self.tried = event.spec, None
            what = f"what generation {event.number} loaded"
        elif gens.pending is not None and event.number == gens.pending.number:
            self.tried = event.spec if self.tried is None else self.tried.merged(event.spec)
            what = f"what the serving generation loaded and generation {event.number} tried"
        else:
            return []
        specs = [s for s in (self.serving, self.tried) if s is not None]
        merged = specs[0] if len(specs) == 1 else specs[0].merged(specs[1])
        return [act.Watch(merged, what)]
