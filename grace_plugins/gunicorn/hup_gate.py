"""When a HUP (or a save, with ``--reload``) reaches gunicorn's own reload (pure: no signal, no
file, no clock: the caller passes *now* and what the records say).

Gunicorn's master reloads once per HUP: twenty HUPs within a second were twenty-two
generations (44 workers booted for ``-w 2``). The master therefore hands a HUP to gunicorn only
as the core's supervisor starts an upgrade: one generation starting at a time, at most one
follow-up for every HUP that arrives meanwhile, and at most one start per ``upgrade_interval``.
A storm is one or two upgrades, and the last HUP is always served by a start that came after it.

A generation is *starting* from the moment its HUP is handed over until the records hold its
verdict (promoted or rolled back), and for at most :attr:`HupGate.limit` seconds: a reload that
opens no generation (another worker class in the new config) must not hold HUPs for ever. The
newest generation undecided counts too: a HUP while the first generation starts waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from grace_plugins.pacing import Pacing


@dataclass(frozen=True)
class Newest:
    """What the records say about the newest generation (``number`` 0: none yet)."""

    number: int
    decided: bool
    #: ``time.monotonic()`` after which it no longer counts as starting, decided or not (its
    #: ready timeout has passed: the workers' rules roll it back by then)
    until: float


@dataclass
class HupGate:
    """The HUPs held back, and when the next may go (times are ``time.monotonic()``). The
    interval and the one follow-up are the core's :class:`~grace_plugins.pacing.Pacing`; what
    is gunicorn's own is how a start is known to be over (the records' verdict)."""

    #: longest a handed-over HUP counts as starting while no newer generation is announced
    limit: float
    #: at most one start per ``interval`` (the core's ``upgrade_interval``), one follow-up
    pacing: Pacing
    #: the newest generation when the last HUP was handed over: the one it starts is newer
    handed_after: int = 0

    @property
    def follow_up(self) -> bool:
        return self.pacing.followup

    def hup(self, now: float, newest: Newest) -> bool:
        """A HUP arrived: True to hand it to gunicorn now, False if it is held (it becomes the
        one follow-up, or joins it)."""
        if self.follow_up or self.starting(now, newest) or self.pacing.too_soon(now):
            self.pacing.queue()
            return False
        self._hand(now, newest)
        return True

    def due(self, now: float, newest: Newest) -> bool:
        """Whether the follow-up goes now (it is then no longer held)."""
        if not self.pacing.followup_due(now, self.starting(now, newest)):
            return False
        self._hand(now, newest)
        return True

    def starting(self, now: float, newest: Newest) -> bool:
        """Whether a generation is starting: the newest is undecided (within its time), or the
        last HUP handed over has opened none yet (within :attr:`limit`)."""
        if newest.number > 0 and not newest.decided and now < newest.until:
            return True
        handed_at = self.pacing.upgrade_started
        if handed_at is None or newest.number > self.handed_after:
            return False
        return now < handed_at + self.limit

    def busy(self, now: float, newest: Newest) -> bool:
        """Whether anything here can change soon: a generation starting, or a HUP held."""
        return self.follow_up or self.starting(now, newest)

    def drop(self) -> None:
        """The master stops: the held HUP is forgotten."""
        self.pacing.cancel()

    def _hand(self, now: float, newest: Newest) -> None:
        self.pacing.upgrade_started = now
        self.handed_after = newest.number
