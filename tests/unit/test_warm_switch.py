"""The off switch and the platform fallback pick the cold spawner, saying why once."""

from __future__ import annotations

import logging
import sys
import threading

from grace_plugins import warm
from grace_plugins.options import Options
from grace_plugins.process import Spawner
from grace_plugins.runner import make_spawner


def test_no_warm_is_the_cold_spawner():
    assert type(make_spawner(Options(warm=False), 1)) is Spawner


def test_without_linux_every_generation_starts_cold_with_one_line(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    here = threading.get_ident()  # count this thread's records only (not a stray thread's)
    handler.emit = lambda record: (  # type: ignore[method-assign]
        lines.append(record.getMessage()) if record.thread == here else None
    )
    logger = logging.getLogger("grace_plugins")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        spawner = make_spawner(Options(warm=True), 1)
    finally:
        logger.removeHandler(handler)
    assert type(spawner) is Spawner
    assert lines == ["warm start needs Linux (this is darwin): every generation starts cold"]


def test_unsupported_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "needs Linux" in (warm.unsupported() or "")
