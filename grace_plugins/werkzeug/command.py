"""``flask --app x hotrun``: ``flask run`` with zero-downtime upgrades (``kill -HUP <pid>``).

Registered through the ``flask.commands`` entry point, so every ``flask`` CLI (and every
:class:`~flask.cli.FlaskGroup` script) has it. Its options are ``flask run``'s own option
objects, copied (same names, defaults, help texts and checks, such as ``--cert``/``--key``),
plus the grace settings of :mod:`grace_plugins.options` (``--pidfile``, ``--ready-timeout``,
``--drain-timeout``...). Each ``flask run`` option also reads the ``FLASK_RUN_*`` variable that
``flask run`` reads, after ``FLASK_HOTRUN_*``.

The process ``flask hotrun`` starts is the supervisor: it never imports the app, so a broken
app cannot bring it down. Each generation re-runs the same command line and loads the app
(``--app module``, ``module:name``, ``path/to/file.py``, ``create_app()`` factories: whatever
``flask run`` accepts) before it reports ready.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import click
from flask.cli import NoAppException, ScriptInfo, pass_script_info, run_command
from flask.cli import show_server_banner as _show_flask_banner
from flask.helpers import get_debug_flag

from grace_plugins.options import BY_NAME, SETTINGS, InvalidValue, Options, Setting
from grace_plugins.werkzeug.serving import ServerSettings, serve_with_upgrades

__all__ = ["hotrun_command"]


def _run_options() -> list[click.Parameter]:
    """Copies of ``flask run``'s parameters, reading ``FLASK_RUN_*`` as a fallback."""
    params = []
    for param in run_command.params:
        clone = copy.copy(param)
        if isinstance(clone, click.Option) and clone.envvar is None and clone.name:
            name = clone.name.upper()
            clone.envvar = [f"FLASK_HOTRUN_{name}", f"FLASK_RUN_{name}"]
        params.append(clone)
    return params


class _SettingType(click.ParamType):
    """A shared setting's parser as a click type: click frames its message ("Invalid value
    for '--drain-timeout': must be ...") as argparse and run_simple frame the same text."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.name = setting.metavar.lower() or setting.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.setting.parse(value)
        except InvalidValue as exc:
            self.fail(str(exc), param, ctx)


def _grace_options() -> list[click.Parameter]:
    """``--pidfile``, the timeouts, ``--ready-path``, ``--warm/--no-warm``... from the
    options module (one default, check and help text for every adapter)."""
    params: list[click.Parameter] = []
    for setting in SETTINGS:
        if setting.is_switch:
            params.append(click.Option([setting.flag], default=setting.default, help=setting.help))
        else:
            params.append(
                click.Option(
                    [setting.flag],
                    type=_SettingType(setting),
                    default=setting.default,
                    show_default=setting.default is not None,
                    metavar=setting.metavar,
                    help=setting.help,
                )
            )
    return params


@click.command(
    "hotrun",
    short_help="Run a development server; kill -HUP upgrades it without downtime.",
    params=[*_run_options(), *_grace_options()],
)
@pass_script_info
def hotrun_command(
    info: ScriptInfo,
    host: str,
    port: int,
    reload: bool | None,
    debugger: bool | None,
    with_threads: bool,
    cert: Any,
    extra_files: list[str] | None,
    exclude_patterns: list[str] | None,
    **rest: Any,
) -> None:
    """Run a local development server that upgrades without downtime.

    Same options as 'flask run'. 'kill -HUP <pid>' (the pid it prints) starts the new code in
    a new process on the same socket; the old process finishes its requests once the new one
    is ready. With the reloader on, saving a watched file does the same. Broken new code is
    rolled back: the old code keeps serving.

    This server is for development purposes only. It does not provide
    the stability, security, or performance of production WSGI servers.

    The reloader and debugger are enabled by default with the '--debug'
    option.
    """
    grace = Options(**{name: rest.pop(name) for name in BY_NAME})  # parsed by click's types
    given = sorted(name for name, value in rest.items() if value not in (None, False))
    if given:
        raise click.UsageError(
            f"hotrun does not support {', '.join(given)} yet: use 'flask run' for that."
        )
    debug = get_debug_flag()
    settings = ServerSettings(
        host,
        port,
        use_reloader=debug if reload is None else reload,
        use_debugger=debug if debugger is None else debugger,
        threaded=with_threads,
        ssl_context=cert,
        extra_files=extra_files,
        exclude_patterns=exclude_patterns,
    )
    serve_with_upgrades(
        settings,
        lambda: _load_app(info),
        grace,
        intro=lambda: _flask_banner(debug, info.app_import_path),
    )


def _flask_banner(debug: bool, app_import_path: str | None) -> str:
    """Flask's own start-up lines ("Serving Flask app ..."), as text for the banner."""
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines):
        _show_flask_banner(debug, app_import_path)
    return lines.getvalue()


def _load_app(info: ScriptInfo) -> Any:
    """Load the app in a generation; a usage problem (no such module) is one line, not a
    traceback, and exits as ``flask run`` does (2): the supervisor rolls back, or at the first
    start exits with that status."""
    try:
        return info.load_app()
    except NoAppException as exc:
        click.secho(f"Error: {exc.format_message()}", err=True, fg="red")
        raise SystemExit(exc.exit_code) from None
