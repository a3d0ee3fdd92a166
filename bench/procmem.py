"""What one process holds, read from Linux ``/proc``: memory (``smaps_rollup``), CPU time
(``stat``) and open fds; shared by ``bench/memory.py`` and ``bench/saves.py``."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One process as ``/proc`` showed it (memory in kB, CPU in clock ticks)."""

    pid: int
    role: str
    rss: int = 0
    pss: int = 0
    uss: int = 0  # Private_Clean + Private_Dirty: what only this process holds
    ticks: int = 0  # utime + stime
    fds: int = 0


def read_proc(pid: int, role: str = "") -> Proc | None:
    """*pid*'s memory, CPU time and fd count; None once it is gone (or unreadable)."""
    found = Proc(pid, role)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                words = rest.split()
                value = int(words[0]) if words else 0
                if key == "Rss":
                    found.rss = value
                elif key == "Pss":
                    found.pss = value
                elif key in ("Private_Clean", "Private_Dirty"):
                    found.uss += value
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        found.ticks = int(fields[11]) + int(fields[12])
        found.fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return found
