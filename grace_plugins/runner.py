"""The one entry point adapters call: become the supervisor, or serve as a generation.

The same program runs in both roles. Started by the user, it binds (or adopts from systemd) the
listeners and supervises; re-run by the supervisor with the handoff variable set, it adopts the
listeners and calls the adapter's ``serve`` function. Adapters therefore need no process logic:
they turn their framework's options into a ``serve(context)`` function and call :func:`run`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from grace_plugins import listeners as lst
from grace_plugins.errors import ExitCode, GraceError, require_posix
from grace_plugins.generation import GenerationContext, run_generation
from grace_plugins.handoff import HANDOFF_VAR, take_handoff, take_systemd_fds
from grace_plugins.log import configure, get_logger
from grace_plugins.process import Spawner
from grace_plugins.reexec import PREFLIGHT_VAR, SUPERVISOR_VAR, take_supervisor_handoff
from grace_plugins.supervisor import Options, Supervisor

ServeFunction = Callable[[GenerationContext], None]


def is_generation() -> bool:
    """True in a process the supervisor started (before :func:`run` consumes the variable)."""
    return HANDOFF_VAR in os.environ


def open_listeners(addresses: Sequence[str | lst.Address]) -> list:
    """Adopt systemd's sockets if it passed any, else bind *addresses*.

    :raises GraceError: for an unusable address or inherited fd.
    """
    inherited = take_systemd_fds()
    if inherited:
        sockets = [lst.adopt(fd, None, "LISTEN_FDS") for _, fd in inherited]
        get_logger().info(
            "socket activation: serving the %d socket(s) systemd passed (LISTEN_FDS): %s",
            len(sockets),
            ", ".join(
                f"{name}={lst.name_of(s)}" for (name, _), s in zip(inherited, sockets, strict=True)
            ),
        )
        return sockets
    sockets = []
    try:
        for address in addresses:
            parsed = address if isinstance(address, lst.Address) else lst.parse_address(address)
            sockets.append(lst.bind(parsed))
    except GraceError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def run(
    serve: ServeFunction,
    addresses: Sequence[str | lst.Address],
    options: Options | None = None,
    *,
    on_listening: Callable[[list[str]], None] | None = None,
) -> int:
    """Run *serve* with hot upgrades; blocks until stopped and returns the exit status.

    In the supervisor role this binds *addresses*, calls ``on_listening(names)`` (for a
    start-up banner) and supervises generations; in a generation it never returns.

    :raises GraceError: for invalid addresses, inherited fds or platforms.
    """
    require_posix()
    if os.environ.pop(PREFLIGHT_VAR, None):
        sys.exit(ExitCode.OK)  # a re-exec preflight: the program got this far, that is all
    handoff = take_handoff()
    if handoff is not None:
        run_generation(handoff, serve)
    configure("supervisor")
    options = options or Options()
    previous_image = take_supervisor_handoff()
    if previous_image is not None:
        sockets = [lst.adopt(fd, name, SUPERVISOR_VAR) for name, fd in previous_image.listeners]
    else:
        sockets = open_listeners(addresses)
        if on_listening is not None:
            on_listening([lst.name_of(s) for s in sockets])
    spawner = make_spawner(options)
    try:
        supervisor = Supervisor(sockets, options, spawner=spawner)
        if previous_image is not None:
            supervisor.adopt(previous_image)
        return supervisor.run()
    finally:
        spawner.close()


def make_spawner(options: Options) -> Spawner:
    """The warm starter when ``options.warm`` and the platform allow it, else the cold one
    (saying why in one log line)."""
    if not options.warm:
        return Spawner()
    from grace_plugins import warm

    why = warm.unsupported()
    if why is not None:
        get_logger().info("%s: every generation starts cold", why)
        return Spawner()
    try:
        return warm.WarmSpawner()
    except (OSError, GraceError) as exc:
        get_logger().info("warm start unavailable (%s): every generation starts cold", exc)
        return Spawner()


def run_or_exit(
    serve: ServeFunction,
    addresses: Sequence[str | lst.Address],
    options: Options | None = None,
    **kwargs: Callable[[list[str]], None] | None,
) -> NoReturn:
    """:func:`run`, then exit with its status; a :class:`GraceError` becomes one line on
    stderr and exit status 2, never a traceback."""
    try:
        code = run(serve, addresses, options, **kwargs)
    except GraceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = ExitCode.USAGE
    sys.exit(code)
