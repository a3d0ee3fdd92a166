"""When the supervisor re-executes itself in place (``kill -USR2``): a pure part of its rules.

USR2 first runs the new program once, in the background (the *preflight*: it must reach the
grace_plugins entry point and exit 0 there); the loop serves signals and generations meanwhile.
A failed or overdue preflight refuses the re-exec and nothing changes. A passed one waits for a
quiet moment (nothing starts or drains: the new image adopts exactly one generation), then the
supervisor execs. A stop cancels it all.
"""

from __future__ import annotations

from grace_plugins import actions as act
from grace_plugins.actions import Action
from grace_plugins.generations import Gen

#: The preflight's states (``None``: not running).
RUNNING, PASSED = "running", "passed"


class ReexecRules:
    """The USR2 request, its preflight and its deadline (times from the rules' clock)."""

    def __init__(self, ready_timeout: float) -> None:
        self.ready_timeout = ready_timeout
        self.preflight: str | None = None
        self.deadline: float | None = None

    def requested(self, now: float, stopping: bool) -> list[Action]:
        """USR2: start the preflight (a second USR2 meanwhile changes nothing)."""
        if stopping or self.preflight is not None:
            return []
        self.preflight, self.deadline = RUNNING, now + self.ready_timeout
        return [
            act.info("re-exec (SIGUSR2): checking that the new program starts"),
            act.Preflight(),
        ]

    def preflight_done(self, why: str | None, alone: Gen | None, counter: int) -> list[Action]:
        """The preflight ended: refuse, or re-exec now that it passed (see :meth:`when_quiet`)."""
        if self.preflight != RUNNING:
            return []  # stopped, or past its deadline: already said
        if why is not None:
            return self._refuse(f"the new program failed: {why}")
        self.preflight, self.deadline = PASSED, None
        if alone is not None:
            return self.when_quiet(alone, counter)
        return [act.info("re-exec (SIGUSR2) deferred until the upgrade under way ends")]

    def when_quiet(self, alone: Gen | None, counter: int) -> list[Action]:
        """Re-exec if the preflight passed and *alone* is the one generation (nothing else
        starts or drains): the new image adopts it."""
        if self.preflight != PASSED or alone is None:
            return []
        self.preflight = None
        return [
            act.info("re-exec (SIGUSR2): re-executing in place"),
            act.Reexec(alone.number, alone.pid, counter),
        ]

    def tick(self, now: float) -> list[Action]:
        if self.deadline is None or now < self.deadline:
            return []
        limit = f"{self.ready_timeout:g} s"
        return self._refuse(f"it did not reach the grace_plugins entry point within {limit}")

    def stop(self) -> list[Action]:
        """Stopping: no re-exec; a running preflight is killed."""
        out: list[Action] = [act.StopPreflight()] if self.preflight == RUNNING else []
        self.preflight = self.deadline = None
        return out

    def _refuse(self, why: str) -> list[Action]:
        self.preflight = self.deadline = None
        return [act.StopPreflight(), act.error("re-exec refused: %s; serving on unchanged", why)]
