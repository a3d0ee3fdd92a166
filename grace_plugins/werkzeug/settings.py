"""The werkzeug adapter's settings: ``run_simple``'s arguments, checked as werkzeug checks
them, before anything is bound (so a mistake is one line, not a traceback in a generation)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from grace_plugins.errors import GraceError


@dataclass
class ServerSettings:
    """``run_simple``'s own arguments (see :func:`run_simple`); the grace settings travel
    apart, as :class:`~grace_plugins.options.Options`."""

    hostname: str
    port: int
    use_reloader: bool = False
    use_debugger: bool = False
    use_evalex: bool = True
    extra_files: Iterable[str] | None = None
    exclude_patterns: Iterable[str] | None = None
    reloader_interval: float = 1
    reloader_type: str = "auto"
    threaded: bool = False
    processes: int = 1
    request_handler: type | None = None
    static_files: dict[str, Any] | None = None
    passthrough_errors: bool = False
    ssl_context: Any = None


def check_settings(settings: ServerSettings) -> None:
    """Reject what werkzeug would reject, before anything is bound.

    :raises TypeError, ValueError: as :func:`run_simple`.
    :raises GraceError: for a certificate that cannot be loaded or a missing library.
    """
    if not isinstance(settings.port, int):
        raise TypeError("port must be an integer")
    if settings.threaded and settings.processes > 1:
        raise ValueError("Cannot have a multi-thread and multi-process server.")
    if settings.use_reloader:
        problem = check_reloader_type(settings.reloader_type)
        if problem:
            raise ValueError(problem)
    _check_ssl(settings.ssl_context)


def check_reloader_type(reloader_type: str) -> str | None:
    """A one-line problem with *reloader_type* (werkzeug's names: ``auto``, ``stat``,
    ``watchdog``), or ``None``. The supervisor's watcher serves them all: ``stat`` polls, the
    others hear the operating system's events (no ``watchdog`` package needed)."""
    from werkzeug._reloader import reloader_loops

    if reloader_type in reloader_loops:
        return None
    known = ", ".join(map(repr, sorted(reloader_loops)))
    return f"Unknown reloader_type {reloader_type!r}: use one of {known}."


def _check_ssl(ssl_context: Any) -> None:
    if ssl_context == "adhoc":
        try:
            import cryptography  # noqa: F401
        except ImportError:
            raise GraceError(
                "Using ad-hoc certificates requires the cryptography library:"
                " pip install cryptography."
            ) from None
    elif isinstance(ssl_context, tuple):
        import ssl

        from werkzeug.serving import load_ssl_context

        try:
            load_ssl_context(*ssl_context)
        except (OSError, ssl.SSLError) as exc:
            raise GraceError(
                f"Cannot load the TLS certificate and key {ssl_context!r} ({exc}): check the"
                " paths and that the key matches the certificate."
            ) from None


def listen_address(hostname: str, port: int) -> str:
    """The core's address for werkzeug's *hostname* and *port*.

    Werkzeug binds a name (``localhost``) as IPv4 and a host with ``:`` as IPv6, and accepts
    ``unix://path``; the same choices are made here.
    """
    if hostname.startswith("unix://"):
        return "unix:" + hostname[len("unix://") :]
    if ":" in hostname:
        return f"[{hostname.strip('[]')}]:{port}"
    try:
        host = socket.gethostbyname(hostname)
    except OSError:
        host = hostname  # the core says it cannot be resolved, and what to do
    return f"{host}:{port}"
