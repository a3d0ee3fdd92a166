"""One logger for the whole package: one line per event, tagged with the process role and pid.

The supervisor and every generation write to the same terminal, so each line says who speaks.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "grace_plugins"


class _RoleFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = f"[grace_plugins] [{self.role} {os.getpid()}] {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def get_logger() -> logging.Logger:
    """Return the package logger (configured or not)."""
    return logging.getLogger(LOGGER_NAME)


def configure(role: str) -> logging.Logger:
    """Send the package's log lines to stderr, tagged with *role* ("supervisor", "gen 3").

    Idempotent: a second call only changes the tag.
    """
    logger = get_logger()
    handler = next((h for h in logger.handlers if getattr(h, "_grace", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._grace = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(_RoleFormatter(role))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
