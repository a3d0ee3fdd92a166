"""A bad grace setting is the same one-line error in every adapter, before anything binds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
FLASK = os.path.join(BIN, "flask")
RUN_SIMPLE = (
    "import sys; from grace_plugins import run_simple\n"
    "run_simple('127.0.0.1', 0, lambda e, s: [], **{sys.argv[1]: sys.argv[2]})\n"
)


def _run(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    # This checkout first: console scripts would otherwise import the installed package.
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("drain-timeout", "-1", "must be a number of seconds >= 0, not '-1'"),
        ("ready-timeout", "0", "must be a number of seconds > 0, not '0'"),
        ("max-draining", "none", "must be a whole number >= 1, not 'none'"),
        ("ready-path", "healthz", "must be a URL path such as /healthz, not 'healthz'"),
    ],
)
def test_same_message_in_every_adapter(flag, value, message):
    runs = {
        "flask hotrun": _run(
            [FLASK, "--app", "app.py", "hotrun", "-p", "0", f"--{flag}={value}"],
            os.path.join(ROOT, "example_flask"),
        ),
        "runhot": _run(
            [sys.executable, "manage.py", "runhot", "127.0.0.1:0", f"--{flag}={value}"],
            os.path.join(ROOT, "example_django"),
        ),
        "run_simple": _run([sys.executable, "-c", RUN_SIMPLE, flag.replace("-", "_"), value], ROOT),
    }
    for name, out in runs.items():
        assert out.returncode == 2, (name, out.stderr)
        assert message in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr, (name, out.stderr)
    assert f"Invalid value for '--{flag}': {message}" in runs["flask hotrun"].stderr
    assert f"argument --{flag}: {message}" in runs["runhot"].stderr
    assert f"Error: {flag.replace('-', '_')} {message}" in runs["run_simple"].stderr
