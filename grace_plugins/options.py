"""The settings every adapter shares: each one's default, validation and help, written once.

``flask hotrun``, ``manage.py runhot`` and ``run_simple`` build their flags (or keyword
arguments) from :data:`SETTINGS`, so a value is checked the same way everywhere and a bad one
gets the same one-line message, naming the flag and what it accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from grace_plugins.errors import GraceError


@dataclass(frozen=True)
class Options:
    """Settings of the handover; every wait is bounded. Build it with :func:`options_from`
    to have the values checked."""

    #: Seconds a new generation has to import the app and report ready before rollback.
    ready_timeout: float = 30.0
    #: Seconds an old generation has to finish its requests (as gunicorn's graceful_timeout).
    drain_timeout: float = 30.0
    #: During a drain, idle keep-alive connections are closed after this many seconds idle.
    keepalive_timeout: float = 5.0
    #: Upgrades start at most once per this many seconds; requests in between coalesce.
    upgrade_interval: float = 1.0
    #: Most generations draining side by side; past it the oldest is cut short.
    max_draining: int = 3
    #: Write the supervisor's pid there (atomically); removed on exit.
    pidfile: str | None = None
    #: Path the new code must answer below 500 (in-process ``GET``) before it takes traffic.
    ready_path: str | None = None
    #: Start new generations from a template that has imported everything but the project.
    warm: bool = True


#: The defaults, for code that needs one value (``DEFAULTS.drain_timeout``).
DEFAULTS = Options()


class InvalidValue(ValueError):
    """A setting's value is out of range; the message says what it accepts."""


def _seconds(*, allow_zero: bool) -> Callable[[object], float]:
    def parse(text: object) -> float:
        try:
            value = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = float("nan")
        ok = value >= 0 if allow_zero else value > 0
        if not ok or value == float("inf"):
            bound = ">= 0" if allow_zero else "> 0"
            raise InvalidValue(f"must be a number of seconds {bound}, not {text!r}")
        return value

    return parse


def _count(text: object) -> int:
    try:
        value = int(str(text))
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidValue(f"must be a whole number >= 1, not {text!r}")
    return value


def _path(text: object) -> str | None:
    if text is None or text == "":
        return None
    return os.fspath(text) if isinstance(text, os.PathLike) else str(text)


def _url_path(text: object) -> str | None:
    if text is None or text == "":
        return None
    path = str(text)
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise InvalidValue(f"must be a URL path such as /healthz, not {text!r}")
    return path


def _switch(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"must be True or False, not {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One shared setting: its :class:`Options` field, command-line flag, parser and help.

    ``parse`` takes the text of a flag or a Python value and returns the checked value, or
    raises :class:`InvalidValue` whose message completes "--flag ..." (each framework frames
    it its own way: click's "Invalid value for", argparse's "argument --flag:").
    """

    name: str
    flag: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str = "SECONDS"

    @property
    def default(self) -> Any:
        return getattr(DEFAULTS, self.name)

    @property
    def is_switch(self) -> bool:
        """A boolean setting: ``--warm/--no-warm`` on the command line."""
        return isinstance(self.default, bool)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "pidfile",
        "--pidfile",
        _path,
        "Write the pid to signal (kill -HUP to upgrade) to this file; removed on exit.",
        metavar="FILE",
    ),
    Setting(
        "ready_timeout",
        "--ready-timeout",
        _seconds(allow_zero=False),
        "Seconds new code has to load and serve before the upgrade is rolled back.",
    ),
    Setting(
        "drain_timeout",
        "--drain-timeout",
        _seconds(allow_zero=True),
        "Seconds the old code has to finish its requests after an upgrade (0: close them at once).",
    ),
    Setting(
        "keepalive_timeout",
        "--keepalive-timeout",
        _seconds(allow_zero=True),
        "While the old code drains, idle keep-alive connections are closed after this"
        " many seconds idle.",
    ),
    Setting(
        "upgrade_interval",
        "--upgrade-interval",
        _seconds(allow_zero=True),
        "Upgrades start at most once per this many seconds; triggers in between coalesce into one.",
    ),
    Setting(
        "max_draining",
        "--max-draining",
        _count,
        "Most old generations draining side by side; past it the oldest is cut short.",
        metavar="N",
    ),
    Setting(
        "ready_path",
        "--ready-path",
        _url_path,
        "Before new code takes traffic, GET this path in-process; an answer of 500 or"
        " more, an exception or a hang rolls the upgrade back.",
        metavar="PATH",
    ),
    Setting(
        "warm",
        "--warm/--no-warm",
        _switch,
        "Start new code from a template process that has already imported the"
        " libraries (only your project's modules are imported anew).",
        metavar="",
    ),
)

BY_NAME: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}


def options_from(**values: Any) -> Options:
    """Return :class:`Options` from keyword values (``None`` means the default for the
    settings whose default is not ``None``), each checked by its setting.

    :raises GraceError: one line naming the flag and what it accepts.
    :raises TypeError: for a name that is not a setting.
    """
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise TypeError(f"unknown grace_plugins option(s): {', '.join(unknown)}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        setting = BY_NAME[name]
        if value is None and setting.default is not None:
            continue
        try:
            checked[name] = setting.parse(value)
        except InvalidValue as exc:
            raise GraceError(f"{name} {exc}.") from None
    return dataclasses.replace(DEFAULTS, **checked)


def options_to_fields(options: Options) -> dict[str, Any]:
    """The settings as plain JSON values, to hand to another process."""
    return dataclasses.asdict(options)


def options_from_fields(fields: Mapping[str, Any]) -> Options:
    """The settings another process handed over (:func:`options_to_fields`), already parsed
    there: only their types are checked. A name this version does not know is ignored (the
    other process may run a newer grace_plugins); a missing one is the default.

    :raises InvalidValue: for a value of the wrong type.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Options):
        if field.name not in fields:
            continue
        value, default = fields[field.name], getattr(DEFAULTS, field.name)
        if not _fits(value, default):
            raise InvalidValue(f"invalid value for {field.name} ({value!r})")
        values[field.name] = float(value) if isinstance(default, float) else value
    return dataclasses.replace(DEFAULTS, **values)


def _fits(value: object, default: object) -> bool:
    """Whether *value* has the type of the setting whose default is *default*."""
    if default is None:
        return value is None or isinstance(value, str)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting to an argparse *parser* (Django's management commands use one):
    ``--drain-timeout SECONDS``, ``--warm/--no-warm``...; a bad value is argparse's usage
    error naming the flag."""
    for setting in SETTINGS:
        dest = setting.name
        if setting.is_switch:
            parser.add_argument(
                f"--{dest.replace('_', '-')}",
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=setting.default,
                help=setting.help,
            )
            continue
        parser.add_argument(
            setting.flag,
            dest=dest,
            type=_argparse_type(setting),
            default=setting.default,
            metavar=setting.metavar,
            help=f"{setting.help}"
            + ("" if setting.default is None else f" (default: {setting.default:g})"),
        )


def _argparse_type(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except InvalidValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name  # argparse names the type in some messages
    return parse
