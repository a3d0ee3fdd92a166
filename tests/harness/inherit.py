"""Malformed inherited inputs (a stale variable in a shell, a unit file gone wrong): each one a
user can meet, the fd 3 that goes with it, and the message the server must answer with
(:data:`MALFORMED_INPUTS`); :func:`run_with_inherited` starts a program with them."""

from __future__ import annotations

import json
import os
import subprocess

from tests.harness.server import PYTHON, ROOT

#: Execs ``argv[3:]`` after putting an fd of kind ``argv[2]`` at fd 3 (or making sure fd 3 is
#: closed) and setting the variables of ``argv[1]`` (JSON; "SELF" becomes the exec'd pid).
INHERIT_LAUNCHER = """
import json, os, socket, sys, tempfile
env, kind = json.loads(sys.argv[1]), sys.argv[2]
keep = []
if kind == "file":
    keep.append(tempfile.TemporaryFile())
    fd = keep[-1].fileno()
elif kind == "pipe":
    fd = os.pipe()[0]
elif kind in ("udp", "tcp", "listening"):
    sock = socket.socket(type=socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if kind == "listening":
        sock.listen()
    fd = sock.detach()
if kind == "closed":
    try:
        os.close(3)
    except OSError:
        pass
elif kind != "none":
    if fd != 3:
        os.dup2(fd, 3)
    os.set_inheritable(3, True)
for name, value in env.items():
    os.environ[name] = value.replace("SELF", str(os.getpid()))
os.execv(sys.argv[3], sys.argv[3:])
"""


def _handoff(**fields: object) -> str:
    """A handoff variable as this test's child would receive it, with *fields* changed."""
    value: dict[str, object] = {
        "v": 1,
        "supervisor": os.getpid(),  # the launcher execs the server: its parent is us
        "generation": 2,
        "listeners": [["tcp:127.0.0.1:1", 3]],
        "channel": 4,
    }
    value.update(fields)
    return json.dumps(value)


H = "GRACE_PLUGINS_HANDOFF"
MALFORMED_INPUTS = {
    "handoff-not-json": ({H: "garbage"}, "none", r"GRACE_PLUGINS_HANDOFF is not valid JSON"),
    "handoff-not-object": ({H: "[1]"}, "none", r"not a JSON object"),
    "handoff-version": ({H: _handoff(v=99)}, "none", r"format version 99"),
    "handoff-other-supervisor": ({H: _handoff(supervisor=1)}, "none", r"pid mismatch"),
    "handoff-bad-pid": ({H: _handoff(supervisor="x")}, "none", r"invalid supervisor pid"),
    "handoff-no-listeners": ({H: _handoff(listeners=[])}, "none", r"has no listeners"),
    "handoff-negative-fd": (
        {H: _handoff(listeners=[["tcp:x", -1]])},
        "none",
        r"invalid listener fd -1",
    ),
    "handoff-entry": ({H: _handoff(listeners=[5])}, "none", r"malformed listener entry"),
    "handoff-channel": ({H: _handoff(channel=None)}, "none", r"invalid channel fd"),
    "handoff-channel-closed": ({H: _handoff(channel=3)}, "closed", r"channel fd 3 is not open"),
    "handoff-channel-file": ({H: _handoff(channel=3)}, "file", r"channel fd 3 is a regular file"),
    "handoff-channel-listener": (
        {H: _handoff(channel=3)},
        "listening",
        r"channel fd 3 is a listening socket",
    ),
    "handoff-channel-udp": ({H: _handoff(channel=3)}, "udp", r"channel fd 3 is not a Unix stream"),
    "handoff-timeout": ({H: _handoff(drain_timeout="soon")}, "none", r"invalid value"),
    "listen-fds-not-count": ({"LISTEN_FDS": "x", "LISTEN_PID": "SELF"}, "none", r"not a count"),
    "listen-pid-missing": ({"LISTEN_FDS": "1"}, "none", r"LISTEN_PID is missing"),
    "listen-pid-not-pid": ({"LISTEN_FDS": "1", "LISTEN_PID": "abc"}, "none", r"not a pid"),
    "listen-pid-other": ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "none", r"is not this process"),
    "listen-names-count": (
        {"LISTEN_FDS": "2", "LISTEN_PID": "SELF", "LISTEN_FDNAMES": "a"},
        "none",
        r"names 1 fds",
    ),
    "fd-closed": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "closed", r"fd 3 is not open"),
    "fd-file": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "file", r"fd 3 .*regular file"),
    "fd-pipe": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "pipe", r"fd 3 .*a pipe"),
    "fd-udp": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "udp", r"fd 3 .*datagram"),
    "fd-not-listening": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "tcp", r"fd 3 .*not listening"),
}


def run_with_inherited(argv: list[str], env: dict[str, str], kind: str, cwd) -> tuple[int, str]:
    """Start *argv* with these inherited variables and fd 3; return (exit status, stderr)."""
    base = {k: v for k, v in os.environ.items() if k not in (H, "LISTEN_FDS", "LISTEN_PID")}
    result = subprocess.run(
        [PYTHON, "-c", INHERIT_LAUNCHER, json.dumps(env), kind, *argv],
        cwd=cwd,
        env={**base, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stderr
