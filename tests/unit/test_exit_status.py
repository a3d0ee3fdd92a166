"""A generation's exit status says why it left: the program's own before ready, 1 after."""

from __future__ import annotations

import logging

import pytest

from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.exit_status import describe, failure_status

LOG = logging.getLogger("test")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (SystemExit(3), 3),
        (SystemExit(2), 2),
        (SystemExit("message"), 1),
        (SystemExit(None), 1),
        (RuntimeError("boom"), 1),
        (GraceError("the ready check failed"), ExitCode.APP_LOAD_ERROR),
    ],
)
def test_before_ready_the_status_is_the_programs(exc, status, capsys):
    assert failure_status(exc, False, 2, LOG) == status


@pytest.mark.parametrize("exc", [SystemExit(3), RuntimeError("boom"), GraceError("x")])
def test_after_ready_a_failure_is_a_crash(exc, caplog):
    with caplog.at_level(logging.ERROR):
        assert failure_status(exc, True, 5, LOG) == 1
    assert "generation 5 crashed" in caplog.text


def test_a_message_to_sys_exit_is_printed_as_python_would(capsys):
    failure_status(SystemExit("cannot start: no database"), False, 1, LOG)
    assert "cannot start: no database" in capsys.readouterr().err


def test_describe_names_the_cause():
    assert describe(SystemExit(3)) == "it called sys.exit(3)"
    assert describe(GraceError("not ready")) == "not ready"
    assert describe(ValueError("bad")) == "ValueError: bad"
