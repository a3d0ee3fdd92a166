"""Whether and how the supervisor watches files: the reloader setting of each adapter.

``flask hotrun --reload`` / ``run_simple(use_reloader=True)`` / ``runhot`` (unless
``--noreload``) turn it on; the framework's own options keep their meaning: werkzeug's
``reloader_type="stat"`` means polling, every ``reloader_interval`` s (its ``"auto"`` and
``"watchdog"`` mean the operating system's events, as werkzeug's watchdog loop does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Watching:
    """The supervisor's file watcher settings (:class:`grace_plugins.watcher.Watcher`)."""

    polling: bool = False
    interval: float = 1.0
