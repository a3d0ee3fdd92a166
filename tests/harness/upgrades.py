"""What an upgrade did, as a client and the supervisor's log see it: how long the new code took
to answer (reported, not asserted: bench/ measures it), and whether the upgrade waited for the
drains of older generations (an order of log lines, not a latency)."""

from __future__ import annotations

import os
import re
import signal
import time

from tests.harness.client import http_get
from tests.harness.procfs import gone_or_zombie
from tests.harness.server import ServerProcess, wait_until


def new_code_after(server: ServerProcess, version: str, timeout: float = 10.0) -> tuple[int, float]:
    """HUP, then poll fresh connections until *version* answers: (its pid, seconds taken)."""
    assert server.port is not None
    port = server.port
    started = time.monotonic()
    os.kill(server.pid, signal.SIGHUP)

    def probe():
        resp = http_get(port)
        return resp if resp.version == version else None

    resp = wait_until(probe, timeout, f"{version} to answer")
    return resp.pid, time.monotonic() - started  # type: ignore[attr-defined]


def draining_generations(server: ServerProcess, serving: int) -> list[int]:
    """Numbers of the generations still running other than the one whose pid is *serving*:
    those draining."""
    return [
        number
        for number, pid in server.generation_pids().items()
        if pid != serving and not gone_or_zombie(pid)
    ]


def assert_started_while_draining(
    server: ServerProcess, number: int, draining: list[int], after: int = 0
) -> None:
    """Generation *number* started before any of *draining* (numbers of generations draining
    when its upgrade was triggered, after output position *after*) exited: the upgrade did not
    wait for their drains."""
    start = rf"(upgrade started \([^)]*\): generation {number} |starting generation {number} \()"
    server.wait_for(start, 10, after=after)  # the log is read on a thread of its own
    lines = server.output(after).splitlines()
    began = [i for i, line in enumerate(lines) if re.search(start, line)]
    for older in draining:
        exited = rf"generation {older} \(pid \d+\) exited after draining"
        ended = [i for i, line in enumerate(lines) if re.search(exited, line)]
        assert not ended or ended[0] > began[0], (
            f"generation {number} started only after generation {older} drained"
        )
