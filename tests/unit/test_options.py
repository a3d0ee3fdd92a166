"""The shared settings: one default, one check and one message for every adapter."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest

from grace_plugins.errors import GraceError
from grace_plugins.options import (
    BY_NAME,
    SETTINGS,
    Options,
    add_arguments,
    options_from,
)

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_defaults() -> dict[str, object]:
    """{flag: default} from the README's table of the settings the adapters share ("none" is
    None, "warm" is on)."""
    rows = re.findall(r"^\| `(--[\w-]+)[^|]*\| (\w+) \|", README.read_text(), flags=re.M)
    words: dict[str, object] = {"none": None, "warm": True}
    return {flag: words[value] if value in words else float(value) for flag, value in rows}


def test_defaults_are_the_documented_ones_and_pass_their_own_check():
    documented = readme_defaults()
    assert {s.name for s in SETTINGS} == set(Options.__dataclass_fields__)
    assert {s.flag.split("/")[0] for s in SETTINGS} == set(documented)
    for setting in SETTINGS:
        assert setting.default == documented[setting.flag.split("/")[0]], setting.name
        assert setting.parse(setting.default) == setting.default, setting.name
        assert setting.flag.startswith("--") and setting.help.endswith(".")
    assert options_from() == Options()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ready_timeout", "2.5", 2.5),
        ("drain_timeout", 0, 0.0),  # 0: close what is left at once, in every adapter
        ("keepalive_timeout", "0", 0.0),
        ("upgrade_interval", 0.2, 0.2),
        ("max_draining", "2", 2),
        ("ready_path", "/healthz", "/healthz"),
        ("ready_path", "", None),
        ("pidfile", "run/x.pid", "run/x.pid"),
        ("warm", False, False),
    ],
)
def test_values_accepted(name, value, expected):
    assert getattr(options_from(**{name: value}), name) == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ready_timeout", 0, "ready_timeout must be a number of seconds > 0, not 0."),
        ("ready_timeout", "soon", "ready_timeout must be a number of seconds > 0, not 'soon'."),
        ("drain_timeout", -1, "drain_timeout must be a number of seconds >= 0, not -1."),
        ("drain_timeout", "inf", "drain_timeout must be a number of seconds >= 0, not 'inf'."),
        ("drain_timeout", "soon", "drain_timeout must be a number of seconds >= 0, not 'soon'."),
        ("keepalive_timeout", "-0.5", "keepalive_timeout must be a number of seconds >= 0"),
        ("upgrade_interval", "nan", "upgrade_interval must be a number of seconds >= 0"),
        ("max_draining", 0, "max_draining must be a whole number >= 1, not 0."),
        ("max_draining", "2.5", "max_draining must be a whole number >= 1, not '2.5'."),
        ("ready_path", "healthz", "ready_path must be a URL path such as /healthz"),
        ("ready_path", "/a b", "ready_path must be a URL path such as /healthz"),
        ("warm", "yes", "warm must be True or False, not 'yes'."),
    ],
)
def test_bad_values_are_one_line(name, value, message):
    with pytest.raises(GraceError) as info:
        options_from(**{name: value})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unknown_name_is_a_type_error():
    with pytest.raises(TypeError, match="unknown grace_plugins option"):
        options_from(drain=1)


def test_argparse_flags_from_the_same_settings(capsys):
    parser = argparse.ArgumentParser(prog="runhot", exit_on_error=True)
    add_arguments(parser)
    args = vars(parser.parse_args(["--drain-timeout", "0", "--no-warm", "--ready-path=/up"]))
    assert options_from(**{name: args[name] for name in BY_NAME}) == Options(
        drain_timeout=0.0, warm=False, ready_path="/up"
    )
    assert vars(parser.parse_args([])) == {s.name: s.default for s in SETTINGS}
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--max-draining", "0"])
    assert info.value.code == 2
    assert "argument --max-draining: must be a whole number >= 1, not '0'" in (
        capsys.readouterr().err
    )
