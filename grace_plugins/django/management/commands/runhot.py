"""``python manage.py runhot``: Django's ``runserver``, upgraded by ``kill -HUP`` or a saved file
without refusing, resetting or cutting off a request.

The command *is* ``runserver`` (``django.contrib.staticfiles``' variant when that app is
installed, as Django picks it): the options, ``addrport`` forms, ``ALLOWED_HOSTS`` check, system
checks, unapplied-migrations warning, static files handler and banner are Django's own. Only
:meth:`Command.run` changes. Where ``runserver`` starts its autoreloader, which re-runs the
program and re-binds the port on every change, ``runhot`` calls :func:`grace_plugins.runner.run`:

* the process the user started becomes the *supervisor*: it binds the port once, keeps its pid
  (the one to signal), re-executes itself into the lean supervisor (what ``django.setup()``
  imported is not kept) and re-runs ``manage.py runhot ...`` as child *generations*. It never
  imports the URLconf, the views or the WSGI application;
* a generation runs ``runserver``'s ``inner_run`` (checks, WSGI handler, banner) on the
  inherited listener. A failing check, a broken import or a hang fails it *before* it reports
  ready, so the upgrade is rolled back and the old code keeps serving. The unapplied-migrations
  warning, which never stops ``runserver``, comes once the generation serves;
* with the autoreloader on, each generation tells the supervisor's file watcher what
  ``runserver`` would watch (:mod:`grace_plugins.django.watchlist`: every imported module, and
  what the ``autoreload_started`` receivers add: templates, locale, ``watch_dir`` globs); a
  save is then what a HUP is.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import threading
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import CommandError, OutputWrapper, SystemCheckError
from django.core.management.commands.runserver import Command as CoreRunserverCommand
from django.core.servers.basehttp import WSGIServer
from django.db import connections
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

from grace_plugins.django.server import hot_server_class, stop_soon
from grace_plugins.django.watchlist import Watchlist
from grace_plugins.generation import GenerationContext
from grace_plugins.options import BY_NAME, Options
from grace_plugins.options import add_arguments as add_grace_arguments
from grace_plugins.readycheck import host_and_port
from grace_plugins.runner import is_generation, run_or_exit
from grace_plugins.watching import Watching

if apps.is_installed("django.contrib.staticfiles"):
    # As Django does for "runserver": staticfiles' variant (--nostatic, --insecure) wins.
    from django.contrib.staticfiles.management.commands.runserver import (
        Command as RunserverCommand,
    )
else:  # pragma: no cover - the example project and the tests install staticfiles
    RunserverCommand = CoreRunserverCommand


#: Seconds after ready before the unapplied-migrations check runs: the first requests the new
#: generation answers come first (the check imports every migration module, holding the GIL:
#: a first answer took 7-12 ms beside it on the site with admin, 4-6 ms without).
MIGRATIONS_AFTER = 0.5


class Command(RunserverCommand):
    help = (
        f"{RunserverCommand.help} Upgrades to new code without dropping a request: kill -HUP"
        " the printed pid, or save a file (with the autoreloader)."
    )

    context: GenerationContext | None = None
    server_cls: type[WSGIServer]  # runserver's class attribute; a generation replaces it
    stderr: OutputWrapper  # BaseCommand's
    _use_reloader = False
    _migrations_later = False

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        add_grace_arguments(parser)
        # runserver's -6 looks like a negative number to argparse, which then takes every
        # negative number for an option: "--drain-timeout -1" got "expected one argument",
        # not the range message. Options are still matched first: -6 stays --ipv6.
        negative_options = getattr(parser, "_has_negative_number_optionals", None)
        if isinstance(negative_options, list):
            negative_options.clear()

    # -- both roles ----------------------------------------------------------------------------
    def run(self, **options: Any) -> None:
        """Supervise (started by the user) or serve (started by the supervisor); never
        returns: exits with the supervisor's status, or when the generation has drained."""
        grace = Options(**{name: options[name] for name in BY_NAME})  # parsed by argparse
        serve = functools.partial(self.serve_generation, options=options)
        watching = Watching() if options["use_reloader"] else None
        if not is_generation() and not options["skip_checks"]:
            self.check_before_start()
        # As runserver's autoreloader marks its child: the process that serves (and only it)
        # says so, for apps that start something once ("if RUN_MAIN == 'true'")
        marked = {DJANGO_AUTORELOAD_ENV: "true"} if watching is not None else {}
        run_or_exit(  # manage.py set Django up: the project is imported
            serve,
            [self.listen_address()],
            grace,
            watching=watching,
            app_imported=True,
            generation_env=marked,
        )

    def check_before_start(self) -> None:
        """Run the system checks before anything is bound, as ``runserver --noreload`` runs
        them in-process: a failing one raises :class:`SystemCheckError` here (``manage.py``
        prints it and exits 1; a Python caller gets the exception). Warnings are left to the
        first generation, which prints them with the banner; the lean supervisor (an exec)
        keeps nothing this imported."""
        stderr = self.stderr
        self.stderr = OutputWrapper(io.StringIO())
        try:
            self.check(display_num_errors=False)
        finally:
            self.stderr = stderr

    def listen_address(self) -> str:
        """The address parsed by ``runserver``'s ``handle`` in the core's notation.

        :raises CommandError: when ``--ipv6`` names a host without an IPv6 address.
        """
        addr = "0.0.0.0" if self.addr == "0" else self.addr
        if not self.use_ipv6:
            return f"{addr}:{self.port}"
        if not self._raw_ipv6:  # a host name with --ipv6: bind its IPv6 address, as Django
            try:
                addr = socket.getaddrinfo(addr, self.port, socket.AF_INET6)[0][4][0]
            except socket.gaierror as exc:
                raise CommandError(
                    f"{addr!r} has no IPv6 address ({exc.strerror}): give an IPv6 address"
                    " such as [::1]:8000, or drop --ipv6."
                ) from None
        return f"[{addr}]:{self.port}"

    # -- in a generation -----------------------------------------------------------------------
    def serve_generation(self, context: GenerationContext, options: dict[str, Any]) -> None:
        """Run ``runserver``'s ``inner_run`` on the inherited listener; blocks until the
        supervisor asks this generation to stop. Anything that fails before the server can
        serve (checks, imports) raises, and the upgrade is rolled back."""
        self.context = context
        self._use_reloader = bool(options["use_reloader"])
        if self._use_reloader:
            context.report_loaded(Watchlist().spec)
        if len(context.listeners) > 1:
            context.logger.warning(
                "runhot serves one address; ignoring %s", ", ".join(context.listener_names[1:])
            )
        base: type[WSGIServer] = self.server_cls
        self.server_cls = hot_server_class(
            base,
            listener=context.listeners[0],
            tracker=context.tracker,
            threaded=options["use_threading"],
            on_serving=functools.partial(self.on_serving, options=options),
        )
        try:
            # basehttp.run must not add its own ThreadingMixIn: the class above has it.
            self.inner_run(None, **{**options, "use_threading": False})
        except CommandError as exc:  # shown as manage.py shows it, without a traceback
            if isinstance(exc, SystemCheckError):
                self.stderr.write(str(exc), lambda x: x)
            else:
                self.stderr.write(f"{type(exc).__name__}: {exc}")
            raise SystemExit(exc.returncode) from None

    def get_handler(self, *args: Any, **options: Any) -> Any:
        """``runserver``'s WSGI handler, with the URLconf (and so the views) imported now:
        ``runserver`` imports it at the first request, but a generation must fail before it
        reports ready, even with ``--skip-checks``."""
        handler = super().get_handler(*args, **options)
        if getattr(settings, "ROOT_URLCONF", None):
            from django.urls import get_resolver

            _ = get_resolver().url_patterns
        return handler

    def on_bind(self, server_port: int) -> None:
        """Django's banner, plus the pid to signal and how."""
        super().on_bind(server_port)
        context = self.context
        if context is None:
            return
        self.stdout.write(
            f"Hot upgrade: kill -HUP {context.supervisor_pid}"
            f"{' or save a file' if self._use_reloader else ''}"
            f" (generation {context.generation}, pid {os.getpid()})."
        )

    def check_migrations(self) -> None:
        """``runserver``'s unapplied-migrations warning, printed once the generation is ready
        rather than before: it never decides whether the server starts (``runserver`` only
        prints it), and it imports every migration module of every app (hundreds on a CMS,
        about as long as the system checks), which an upgrade need not wait for."""
        if self.context is None:
            super().check_migrations()
        else:
            self._migrations_later = True

    def _check_migrations_now(self) -> None:
        """The deferred check, on a thread of its own: a failure (the database unreachable, a
        migration that does not import) is reported, as ``runserver`` would show it, and the
        generation serves on."""
        try:
            super().check_migrations()
        except Exception as exc:  # noqa: BLE001 - reported; the check only ever warns
            self.stderr.write(f"The unapplied-migrations check failed: {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()  # this thread's own connections

    def on_serving(self, server: WSGIServer, *, options: dict[str, Any]) -> None:
        """On the serving thread, just before the accept loop: arm the stop, run the ready
        check, report ready, then start the unapplied-migrations check (a moment later)."""
        context = self.context
        assert context is not None
        context.on_stop(stop_soon(server))
        if context.options.ready_path:
            host, port = host_and_port(context.listeners[0])
            context.check_ready(
                server.get_app(), context.options.ready_path, host=allowed_host(host), port=port
            )
        context.ready()
        if self._migrations_later:
            later = threading.Timer(MIGRATIONS_AFTER, self._check_migrations_now)
            later.name, later.daemon = "grace-migrations", True
            later.start()


def allowed_host(host: str) -> str:
    """A ``Host`` for the ready check that ``ALLOWED_HOSTS`` accepts (else Django answers 400
    without running a view): the listener's own address if allowed, else the first name the
    setting gives."""
    from django.http.request import validate_host

    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:  # what Django itself allows in that case
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if validate_host(host, allowed):
        return host
    names = [name.lstrip(".") for name in allowed if name != "*" and name.lstrip(".")]
    return names[0] if names else host
