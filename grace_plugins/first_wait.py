"""How long a program's first generation waits for the template built from its seed.

The template imports what the program imported before, and a cold generation would import the
same: while the template is importing, waiting for it is the better bet. On a loaded machine (a
CI runner, a laptop compiling) it can take several times as long as last time, and a cold
generation started beside it only shares the cores with it, then shares no pages with it. So
the wait has a first budget (from the seed: twice the template's last time, at least two
seconds), then goes on a step at a time for as long as the template keeps using the CPU, up to
a cap (a third of the ready timeout, so that a cold start still fits). A template blocked on a
lock or the network uses none: the generation starts cold at the end of the first budget.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from grace_plugins.process import SpawnRequest

#: Seconds between two looks at the template once the first budget is spent.
STEP = 1.0
#: CPU seconds the template must have used since the last look to count as importing.
MIN_CPU = 0.05


@dataclass
class FirstWait:
    """The first generation, held until its seeded template is ready (or given up on)."""

    request: SpawnRequest
    #: the next look at the template (the end of the wait unless it is still importing)
    deadline: float
    #: never later than this
    cap: float
    #: the template's CPU seconds at the last look (None: unknown, no step is added)
    cpu: float | None

    def goes_on(self, now: float, cpu: float | None) -> bool:
        """At :attr:`deadline`: True (and the next look moved a step on) while the template has
        used :data:`MIN_CPU` seconds of CPU since the last look and the cap is not reached."""
        if now >= self.cap or cpu is None or self.cpu is None or cpu - self.cpu < MIN_CPU:
            return False
        self.cpu, self.deadline = cpu, min(now + STEP, self.cap)
        return True


def hold(
    request: SpawnRequest, budget: float, cap: float, template: int, log: logging.Logger
) -> FirstWait:
    """Hold *request* for the template (pid *template*): *budget* seconds first (from the
    seed), up to *cap* while it keeps importing; says so in one line."""
    now, wait = time.monotonic(), min(budget, cap)
    log.info(
        "warm start: generation %d waits (%.1f s, up to %.1f s while it is importing) for a"
        " template of the modules this program imported (its last run, or the command before"
        " serving)",
        request.number,
        wait,
        cap,
    )
    return FirstWait(request, now + wait, now + cap, cpu_seconds(template))


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) process *pid* has used, or None where ``/proc`` does not
    say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
