"""When upgrades and restarts may start: a pure part of the supervisor's rules.

Upgrades start at most once per ``upgrade_interval`` (a HUP storm or an editor's burst of
writes makes at most two upgrades): triggers meanwhile coalesce into one follow-up. A
generation that keeps dying is restarted after growing delays, reset after a stable run.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

#: Restart delays for a generation that keeps dying; reset after a stable run.
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Seconds a generation must have served for its death to reset the back-off.
STABLE_AFTER = 30.0


@dataclass
class Pacing:
    """The follow-up, the interval and the back-off (times from the rules' clock)."""

    interval: float
    upgrade_started: float | None = None  # None: no upgrade started yet
    followup: bool = False
    followup_at: float | None = None
    restart_at: float | None = None
    failures: int = 0

    def too_soon(self, now: float) -> bool:
        """Whether an upgrade started less than ``interval`` ago."""
        return self.upgrade_started is not None and now < self.upgrade_started + self.interval

    def queue(self) -> bool:
        """Ask for one follow-up; True if none was queued yet (worth a log line)."""
        new = not self.followup
        self.followup = True
        return new

    def followup_due(self, now: float, busy: bool) -> bool:
        """Whether the queued follow-up starts now (it waits while *busy* and for the
        interval; :attr:`followup_at` says when to look again)."""
        if not self.followup or busy:
            self.followup_at = None
            return False
        started = self.upgrade_started
        if started is not None and now < started + self.interval:
            self.followup_at = started + self.interval
            return False
        self.followup = False
        self.followup_at = None
        return True

    def back_off(self, now: float) -> float:
        """Schedule the next restart attempt; return its delay."""
        delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
        self.failures += 1
        self.restart_at = now + delay
        return delay

    def died_after(self, seconds: float) -> None:
        """A serving generation died after *seconds*: a stable run resets the back-off."""
        if seconds > STABLE_AFTER:
            self.failures = 0

    def restart_due(self, now: float) -> bool:
        """Whether the scheduled restart is due (it is then no longer scheduled)."""
        if self.restart_at is None or now < self.restart_at:
            return False
        self.restart_at = None
        return True

    def cancel(self) -> None:
        """Stopping: no follow-up, no restart."""
        self.followup = False
        self.restart_at = None

    def moments(self) -> list[float]:
        """The times at which something may be due."""
        return [m for m in (self.restart_at, self.followup_at) if m is not None]


def describe_status(returncode: int) -> str:
    """``exit status N`` or ``killed by SIGNAME``, as the log lines say it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
