"""``grace_plugins.run_simple``: werkzeug's ``run_simple`` with zero-downtime upgrades.

Same parameters, same meaning; the difference is what happens on a change. Werkzeug's reloader
kills the server and starts a new one (the port is served by nobody meanwhile, and broken code
leaves nothing serving). Here the process the user started becomes the supervisor, binds the
address once and runs the app in child *generations*; ``kill -HUP <pid>`` (or, with the
reloader on, saving a watched file) starts a new generation on the same socket, and the old one
finishes its requests only once the new one is ready. Broken new code is rolled back.

The serving itself is werkzeug's: its server classes and request handler
(:mod:`grace_plugins.werkzeug.server`), its debugger and static-files middleware. With the
reloader on, each generation tells the supervisor's file watcher what werkzeug's reloader would
watch (:mod:`grace_plugins.werkzeug.watchlist`); a save is then what a HUP is.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from grace_plugins import runner
from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.generation import GenerationContext
from grace_plugins.options import DEFAULTS, Options, options_from
from grace_plugins.readycheck import host_and_port
from grace_plugins.watching import Watching
from grace_plugins.werkzeug.settings import ServerSettings, check_settings, listen_address
from grace_plugins.werkzeug.watchlist import serving_spec

__all__ = ["ServerSettings", "run_simple", "serve_with_upgrades"]

WSGIApp = Callable[..., Any]


def run_simple(
    hostname: str,
    port: int,
    application: WSGIApp,
    use_reloader: bool = False,
    use_debugger: bool = False,
    use_evalex: bool = True,
    extra_files: Iterable[str] | None = None,
    exclude_patterns: Iterable[str] | None = None,
    reloader_interval: int = 1,
    reloader_type: str = "auto",
    threaded: bool = False,
    processes: int = 1,
    request_handler: type | None = None,
    static_files: dict[str, Any] | None = None,
    passthrough_errors: bool = False,
    ssl_context: Any = None,
    *,
    pidfile: str | None = None,
    ready_timeout: float = DEFAULTS.ready_timeout,
    drain_timeout: float = DEFAULTS.drain_timeout,
    keepalive_timeout: float = DEFAULTS.keepalive_timeout,
    upgrade_interval: float = DEFAULTS.upgrade_interval,
    max_draining: int = DEFAULTS.max_draining,
    ready_path: str | None = DEFAULTS.ready_path,
    warm: bool = DEFAULTS.warm,
) -> None:
    """Serve *application* like :func:`werkzeug.serving.run_simple`, upgradable without
    downtime by ``kill -HUP <pid>`` (the pid the banner shows: this process's).

    Never returns: this process becomes the supervisor (it re-executes itself into a small
    one that holds no app), and the process exits with the server's status once stopped
    (Ctrl+C, ``kill -TERM``), as werkzeug's reloader process does. Neither code after the
    call nor a ``finally`` around it ever runs; ``atexit`` hooks run in each generation as it
    exits. The program is re-run for each generation, so call this from
    the ``if __name__ == "__main__":`` block of a script (or a console script), as with
    werkzeug's reloader.

    :param use_reloader: also upgrade when a watched file changes (werkzeug's ``stat`` or
        ``watchdog`` loop chooses the files; ``extra_files``, ``exclude_patterns``,
        ``reloader_interval`` and ``reloader_type`` keep their meaning).
    The keyword-only grace settings (``pidfile``, ``ready_timeout``, ``drain_timeout``,
    ``keepalive_timeout``, ``upgrade_interval``, ``max_draining``, ``ready_path``, ``warm``)
    mean what the flags of ``flask hotrun`` mean (:data:`grace_plugins.options.SETTINGS`).
    :raises TypeError: if *port* is not an integer.
    :raises ValueError: for ``threaded`` with ``processes > 1``, or an unknown
        ``reloader_type``.
    :raises SystemExit: with status 2 and a one-line ``Error:`` for an unusable address,
        certificate or grace setting, 4 when the app fails to start.
    """
    try:
        grace = options_from(
            pidfile=pidfile,
            ready_timeout=ready_timeout,
            drain_timeout=drain_timeout,
            keepalive_timeout=keepalive_timeout,
            upgrade_interval=upgrade_interval,
            max_draining=max_draining,
            ready_path=ready_path,
            warm=warm,
        )
    except GraceError as exc:
        _usage_error(exc)
    settings = ServerSettings(
        hostname,
        port,
        use_reloader=use_reloader,
        use_debugger=use_debugger,
        use_evalex=use_evalex,
        extra_files=extra_files,
        exclude_patterns=exclude_patterns,
        reloader_interval=reloader_interval,
        reloader_type=reloader_type,
        threaded=threaded,
        processes=processes,
        request_handler=request_handler,
        static_files=static_files,
        passthrough_errors=passthrough_errors,
        ssl_context=ssl_context,
    )
    serve_with_upgrades(settings, lambda: application, grace, app_imported=True)


def serve_with_upgrades(
    settings: ServerSettings,
    load_app: Callable[[], WSGIApp],
    grace: Options,
    *,
    intro: Callable[[], str] | None = None,
    app_imported: bool = False,
) -> None:
    """Supervise (or, in a generation, serve) with *settings* and the grace settings *grace*
    (used by the supervisor; a generation gets them from its handoff); blocks until stopped.

    *load_app* runs in each generation only, after its signal handlers are in place: the
    supervisor never imports the app, so a broken app cannot break it. *intro* (e.g. Flask's
    "Serving Flask app" lines) opens the start-up banner, which is printed once the first
    generation serves. *app_imported*: this process imported the app already (as
    :func:`grace_plugins.runner.run` says).

    :raises SystemExit: as :func:`run_simple`.
    """
    try:
        check_settings(settings)
    except GraceError as exc:
        _usage_error(exc)
    # As in werkzeug, the process that serves (and only it) runs "from the reloader": the
    # debugger prints its PIN there, and apps that start things once can tell. Not the
    # supervisor, which prints Flask's banner (as the reloader's first process does).
    marked = {"WERKZEUG_RUN_MAIN": "true"} if settings.use_reloader else {}
    try:
        code = runner.run(
            _serve_function(settings, load_app),
            [listen_address(settings.hostname, settings.port)],
            grace,
            on_listening=lambda names: (intro() if intro else "") + banner(settings, names),
            watching=watching(settings),
            app_imported=app_imported,
            generation_env=marked,
        )
    except GraceError as exc:
        _usage_error(exc)
    if code:
        sys.exit(code)


def watching(settings: ServerSettings) -> Watching | None:
    """The supervisor's file watcher, as werkzeug's reloader options ask: ``stat`` polls
    every ``reloader_interval`` s; ``auto`` and ``watchdog`` hear the OS's events."""
    if not settings.use_reloader:
        return None
    return Watching(settings.reloader_type == "stat", float(settings.reloader_interval))


def _usage_error(exc: GraceError) -> NoReturn:
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(ExitCode.USAGE)


def banner(settings: ServerSettings, names: list[str]) -> str:
    """werkzeug's start-up lines, plus the pid to signal for an upgrade and how."""
    from werkzeug.serving import _ansi_style, get_interface_ip

    scheme = "https" if settings.ssl_context is not None else "http"
    messages = [
        _ansi_style(
            "WARNING: This is a development server. Do not use it in a production"
            " deployment. Use a production WSGI server instead.",
            "bold",
            "red",
        )
    ]
    for name in names:
        if name.startswith("unix:"):
            messages.append(f" * Running on {settings.hostname}")
            continue
        host, _, port = name.removeprefix("tcp:").rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", "::"):
            messages.append(f" * Running on all addresses ({host})")
            family = socket.AF_INET if host == "0.0.0.0" else socket.AF_INET6
            localhost = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
            messages.append(f" * Running on {scheme}://{localhost}:{port}")
            host = get_interface_ip(family)
        display = f"[{host}]" if ":" in host else host
        messages.append(f" * Running on {scheme}://{display}:{port}")
    pid = os.getpid()
    upgrade = f" * Zero-downtime upgrade: kill -HUP {pid}"
    if settings.use_reloader:
        upgrade += f", or save a watched file (reloader: {settings.reloader_type})"
    messages.append(upgrade)
    messages.append(_ansi_style(f"Press CTRL+C to quit (or kill -TERM {pid})", "yellow"))
    return "\n".join(messages)


def wrap_application(app: WSGIApp, settings: ServerSettings) -> WSGIApp:
    """Add werkzeug's static-files and debugger middleware, in werkzeug's order."""
    if settings.static_files:
        from werkzeug.middleware.shared_data import SharedDataMiddleware

        app = SharedDataMiddleware(app, settings.static_files)
    if settings.use_debugger:
        from werkzeug.debug import DebuggedApplication

        app = DebuggedApplication(app, evalex=settings.use_evalex)
        app.trusted_hosts.append(settings.hostname)
    return app


def _serve_function(
    settings: ServerSettings, load_app: Callable[[], WSGIApp]
) -> Callable[[GenerationContext], None]:
    def serve(context: GenerationContext) -> None:
        from grace_plugins.werkzeug.server import (
            POLL_INTERVAL,
            make_hot_server,
            wait_for_children,
        )

        if settings.use_reloader:
            context.report_loaded(
                functools.partial(serving_spec, settings.extra_files, settings.exclude_patterns),
                extra_files=settings.extra_files or (),
                exclude=settings.exclude_patterns or (),
            )
        app = wrap_application(load_app(), settings)
        if len(context.listeners) > 1:
            context.logger.warning(
                "werkzeug serves one socket: serving %s, ignoring %s",
                context.listener_names[0],
                ", ".join(context.listener_names[1:]),
            )
        server = make_hot_server(
            context.listeners[0],
            app,
            context.tracker,
            threaded=settings.threaded,
            processes=settings.processes,
            request_handler=settings.request_handler,
            passthrough_errors=settings.passthrough_errors,
            ssl_context=settings.ssl_context,
        )
        context.add_listener_copy(server.socket)  # werkzeug serves a dup of the listener
        context.on_stop(server.shutdown)
        if context.options.ready_path:
            host, port = host_and_port(context.listeners[0])
            scheme = "https" if settings.ssl_context is not None else "http"
            context.check_ready(
                app, context.options.ready_path, host=host, port=port, scheme=scheme
            )
        context.ready()
        server.serve_forever(poll_interval=POLL_INTERVAL)  # closes the server's copy
        context.close_listeners()
        killed = wait_for_children(server, context.options.drain_timeout)
        if killed:
            context.logger.warning("killed %d request processes at the drain deadline", killed)

    return serve
