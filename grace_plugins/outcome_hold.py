"""An upgrade's outcome, held until the old generation no longer accepts (pure).

``grace-plugins reload`` and systemd's reload return once the outcome is recorded (the
:class:`~grace_plugins.actions.Serving` action), and a smoke test right after must meet the new
code. The old generation gets its drain order at the promotion and stops accepting a moment
later, on its own thread; so the outcome waits until it says ``stopped`` (its listener fds are
plugged), until it is gone (exited, or its channel closed), or :data:`STOPPED_WAIT` at most: an
old generation running an older version of this package (adopted after USR2) never says it.
"""

from __future__ import annotations

from dataclasses import dataclass

from grace_plugins.actions import Action

#: The longest an outcome waits for the old generation's ``stopped`` (it comes within
#: milliseconds: the old generation's channel thread reads the drain order and plugs its fds).
STOPPED_WAIT = 1.0


@dataclass(frozen=True)
class _Held:
    actions: list[Action]
    old: int  # the generation whose ``stopped`` it waits for
    until: float


class OutcomeHold:
    """At most one held outcome: each method returns the actions it releases (or none)."""

    def __init__(self) -> None:
        self._held: _Held | None = None

    @property
    def deadline(self) -> float | None:
        return self._held.until if self._held is not None else None

    def hold(self, actions: list[Action], old: int | None, now: float) -> list[Action]:
        """Hold *actions* until generation *old* stopped accepting (at once without one); an
        outcome held before is released first: outcomes are recorded in order."""
        released = self.release()
        if old is None:
            return [*released, *actions]
        self._held = _Held(actions, old, now + STOPPED_WAIT)
        return released

    def stopped(self, number: int) -> list[Action]:
        """Generation *number* stopped accepting, or is gone."""
        if self._held is not None and self._held.old == number:
            return self.release()
        return []

    def tick(self, now: float) -> list[Action]:
        if self._held is not None and now >= self._held.until:
            return self.release()
        return []

    def release(self) -> list[Action]:
        """Now, whatever the old generation does (a stop, or another upgrade starts)."""
        held, self._held = self._held, None
        return held.actions if held is not None else []
