"""``grace-plugins`` (or ``python -m grace_plugins``): upgrade a running server and wait.

``grace-plugins reload --pidfile PATH`` sends the upgrade signal and blocks until the upgrade
has finished, so that ``ExecReload=`` in a systemd unit, a deploy script or a human knows the
outcome: exit 0 when the new generation took over, :data:`ROLLED_BACK` when the new code was
broken and the old one still serves, :data:`TIMED_OUT` when no outcome came in time.
``grace-plugins status`` prints what the supervisor last recorded.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.pidfile import read_pidfile
from grace_plugins.process import ancestor_where, parent_pid, pid_alive
from grace_plugins.state import read_state_at, state_path
from grace_plugins.state_lookup import locate_state

ROLLED_BACK = 1
TIMED_OUT = 3
NOT_RUNNING = 7  # as LSB's "program is not running"


class NotRunningError(GraceError):
    """The server named by the pidfile or pid is not running."""


def _target_pid(args: argparse.Namespace) -> int:
    if args.pid is not None:
        return args.pid
    pid = read_pidfile(args.pidfile)
    if pid is None:
        raise NotRunningError(f"Cannot read a pid from {args.pidfile}: is the server running?")
    return pid


def _state_of(pid: int) -> tuple[str, dict[str, Any]]:
    """The path of *pid*'s state file and what it holds."""
    if not pid_alive(pid):
        raise NotRunningError(f"No process {pid}: the server is not running (stale pidfile?).")
    path = locate_state(pid)
    state = read_state_at(path) if path is not None else None
    if path is None or state is None:
        above = ancestor_where(pid, lambda one: locate_state(one) is not None, parent_pid)
        if above is not None:
            raise GraceError(
                f"Process {pid} is a child of the grace_plugins supervisor (or gunicorn master)"
                f" {above}, not the process to ask: use --pid {above} (or its pidfile)."
            )
        raise GraceError(
            f"Process {pid} is not a grace_plugins supervisor run by this user (no state at"
            f" {state_path(pid)}); signal it with kill -HUP {pid} instead."
        )
    return path, state


def reload(args: argparse.Namespace) -> int:
    """Send SIGHUP and wait for the outcome; blocks at most ``args.timeout`` seconds."""
    pid = _target_pid(args)
    path, before = _state_of(pid)
    # An upgrade under way finishes first; ours is the follow-up after it.
    wanted = before.get("upgrades", 0) + (2 if before.get("in_progress") else 1)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = read_state_at(path)
        if state is None:
            if not pid_alive(pid):
                print(f"the server (pid {pid}) exited during the upgrade", file=sys.stderr)
                return NOT_RUNNING
        elif state.get("upgrades", 0) >= wanted:
            last = state.get("last_upgrade") or {}
            if last.get("outcome") == "ok":
                print(f"upgraded: {last.get('detail', '')}")
                return ExitCode.OK
            print(f"rolled back: {last.get('detail', '')}", file=sys.stderr)
            return ROLLED_BACK
        time.sleep(0.05)
    print(
        f"no outcome within {args.timeout:g} s: the upgrade may still be running", file=sys.stderr
    )
    return TIMED_OUT


def status(args: argparse.Namespace) -> int:
    """Print the serving generation, the draining ones and the last upgrade; does not block."""
    pid = _target_pid(args)
    _, state = _state_of(pid)
    now = time.time()
    role = state.get("role", "supervisor")  # or "gunicorn master"
    print(f"{role} pid {pid}, up {now - state.get('started', now):.0f} s")
    if state.get("listeners"):
        print(f"listening: {', '.join(state['listeners'])}")
    if "generation" in state:
        since = state.get("generation_since", now)
        pids = state.get("generation_pid")
        print(
            f"serving: generation {state['generation']} "
            f"({f'pid {pids}' if pids else 'no worker ready'}), up {now - since:.0f} s"
        )
    for mold in state.get("molds") or []:  # gunicorn --preload: who imports each generation
        workers = ", ".join(str(pid) for pid in mold.get("workers") or []) or "none yet"
        spare = f", spare {mold['spare']}" if mold.get("spare") else ""
        print(
            f"mold: generation {mold.get('generation')} (pid {mold.get('pid')}{spare}),"
            f" up {now - mold.get('since', now):.0f} s, workers forked from it: {workers}"
        )
    for gen in state.get("draining") or []:
        print(draining_line(gen, now))
    print(f"upgrades finished: {state.get('upgrades', 0)}", end="")
    print(" (one in progress)" if state.get("in_progress") else "")
    last = state.get("last_upgrade")
    if last:
        ago = now - last.get("finished", now)
        print(f"last upgrade: {last.get('outcome')} {ago:.0f} s ago: {last.get('detail', '')}")
    return ExitCode.OK


def draining_line(gen: dict[str, Any], now: float) -> str:
    """One draining generation as ``status`` prints it. The count of connections is left out
    when the generation never reported it (one run by an older version)."""
    seconds = max(0.0, gen.get("deadline", now) - now)
    left = gen.get("left")
    held = f" {left} connections left," if isinstance(left, int) else ""
    cut = " (cut short: more than max_draining drain)" if gen.get("cut") else ""
    return (
        f"draining: generation {gen.get('generation')} (pid {gen.get('pid')}),{held}"
        f" {seconds:.0f} s to its deadline{cut}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grace-plugins", description="Upgrade a running grace_plugins server and wait."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("reload", reload, "upgrade (SIGHUP) and wait for the outcome"),
        ("status", status, "show the serving and draining generations and the last upgrade"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--pidfile", help="the server's pidfile")
        target.add_argument("--pid", type=int, help="the supervisor's (or master's) pid")
        if name == "reload":
            sub.add_argument(
                "--timeout",
                type=float,
                default=90.0,
                help="seconds to wait for the outcome (default: 90)",
            )
        sub.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``grace-plugins``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GraceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return NOT_RUNNING if isinstance(exc, NotRunningError) else ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
