"""Where the supervisor's decisions become visible: the log, systemd, the state file.

One rule lives here rather than in a comment: ``READY=1`` goes to systemd *before* the state
file records an upgrade's outcome (:meth:`Reporter.serving`), because ``grace-plugins reload``
(systemd's ``ExecReload=``) returns as soon as the outcome is recorded, and systemd must not
see the reload end before ``READY=1``.
"""

from __future__ import annotations

import logging
import time

from grace_plugins import actions as act
from grace_plugins.errors import GraceError
from grace_plugins.sdnotify import Notifier
from grace_plugins.state import StateFile


class Reporter:
    """The log, the systemd notifier and the state file (``None`` when it cannot be written)."""

    def __init__(self, logger: logging.Logger, notifier: Notifier) -> None:
        self.logger = logger
        self.notifier = notifier
        self.state: StateFile | None = None

    def open_state(self, resume: bool, listeners: list[str]) -> None:
        """Create the state file (or, after a re-exec, resume it); log why if it cannot be."""
        try:
            self.state = StateFile.resume() if resume else StateFile()
            self.state.update(listeners=listeners)
        except GraceError as exc:
            self.logger.error("no state file for grace-plugins reload/status: %s", exc)

    def log(self, line: act.Log) -> None:
        self.logger.log(line.level, line.fmt, *line.args)

    def notify(self, message: act.Notify) -> None:
        if message.kind == "reloading":
            self.notifier.reloading(message.status)
        elif message.kind == "stopping":
            self.notifier.stopping()

    def serving(self, news: act.Serving) -> None:
        """``READY=1``, then the outcome, then the serving generation (see the module doc)."""
        self.notifier.ready(news.status)
        if self.state is None:
            return
        if news.outcome is not None:
            self.state.record_upgrade(news.outcome, news.detail, **news.fields)
        if news.number is not None:
            self.state.update(
                generation=news.number, generation_pid=news.pid, generation_since=time.time()
            )

    def record(self, fields: dict[str, object]) -> None:
        if self.state is not None:
            self.state.update(**fields)

    def record_draining(self, draining: act.RecordDraining, now: float) -> None:
        """Record the draining generations with wall-clock deadlines (*now* is monotonic) and
        the connections each still holds (``left``, only from a generation that said it)."""
        wall = time.time()
        entries = []
        for g in draining.generations:
            entry = {"generation": g.number, "pid": g.pid, "deadline": wall + (g.deadline - now)}
            entry["cut"] = g.cut
            if g.left is not None:
                entry["left"] = g.left
            entries.append(entry)
        self.record({"draining": entries})

    def close(self) -> None:
        """The supervisor is leaving: remove the state file, say ``STOPPING=1``."""
        if self.state is not None:
            self.state.remove()
        self.notifier.stopping()
