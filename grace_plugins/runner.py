"""The one entry point adapters call: become the supervisor, or serve as a generation.

The same program runs in both roles. Started by the user, it binds (or adopts from systemd) the
listeners and supervises; re-run by the supervisor with the handoff variable set, it adopts the
listeners and calls the adapter's ``serve`` function. Adapters therefore need no process logic:
they turn their framework's options into a ``serve(context)`` function and call :func:`run`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from grace_plugins import listeners as lst
from grace_plugins import warm_seed
from grace_plugins.cmdline import program_argv, working_dir
from grace_plugins.errors import ExitCode, GraceError, require_posix
from grace_plugins.generation import GenerationContext, run_generation
from grace_plugins.handoff import HANDOFF_VAR, take_handoff, take_systemd_fds
from grace_plugins.lean import become_lean
from grace_plugins.log import configure, get_logger
from grace_plugins.pidfile import check_pidfile
from grace_plugins.process import Spawner
from grace_plugins.reexec import (
    PREFLIGHT_VAR,
    SUPERVISOR_VAR,
    SupervisorHandoff,
    take_supervisor_handoff,
)
from grace_plugins.supervisor import Options, Supervisor
from grace_plugins.watcher import Watcher
from grace_plugins.watching import Watching

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
    on_listening: Callable[[list[str]], str | None] | None = None,
    watching: Watching | None = None,
    app_imported: bool = False,
    generation_env: Mapping[str, str] | None = None,
) -> int:
    """Run *serve* with hot upgrades; blocks until stopped. Returns the exit status only
    where this process could not become the lean supervisor (the exec failed: a frozen
    program); otherwise the lean supervisor, which replaced this program, exits with it.

    In the supervisor role this binds *addresses*, calls ``on_listening(names)`` for the
    start-up banner (printed once the first generation serves), then re-executes itself
    into the lean supervisor (:mod:`grace_plugins.lean`) and supervises generations, watching
    files with *watching* (the reloader on); in a generation it never returns.
    *app_imported*: this process imported the app already (``run_simple`` is given it,
    ``manage.py`` set Django up), so at a program's first start what it imported seeds the
    warm-start template that forks the first generation (:func:`.warm_seed.plant`).
    *generation_env*: variables set in each generation's environment only, such as the
    "this process serves" mark a framework's reloader gives its child (werkzeug's
    ``WERKZEUG_RUN_MAIN``, Django's ``RUN_MAIN``): the supervisor, which runs the program's
    start too (and again after USR2), never sees them.

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
    image = take_supervisor_handoff()  # after a USR2: the listeners and the generation
    options = _pidfile_kept(options, image)
    if options.pidfile:
        check_pidfile(options.pidfile)  # before anything is bound or started
    if image is not None:
        sockets = adopt_listeners(image)
    else:
        sockets = open_listeners(addresses)
        image = SupervisorHandoff([(lst.name_of(s), s.fileno()) for s in sockets])
        if on_listening is not None:
            image.banner = on_listening([name for name, _ in image.listeners]) or ""
    image.program, image.argv_len = program_argv(), len(sys.argv)
    image.options, image.watching = options, watching
    image.generation_env = dict(generation_env or {})
    if options.warm and app_imported and not image.generation:
        warm_seed.plant(image.program, working_dir(), os.environ)
    why = become_lean(image)  # returns only if the exec failed
    get_logger().info("%s: supervising in this process", why)
    return supervise(image, sockets)


def _pidfile_kept(options: Options, image: SupervisorHandoff | None) -> Options:
    """*options* with the pidfile an absolute path: the one the image before this one wrote,
    after a USR2 (a relative one would name another file, after a symlink switch, once the
    exec entered the new release), else the one named here."""
    kept = image.options.pidfile if image is not None else None
    if options.pidfile:
        return dataclasses.replace(options, pidfile=kept or os.path.abspath(options.pidfile))
    return options


def adopt_listeners(image: SupervisorHandoff) -> list[socket.socket]:
    """The listeners a previous image of this supervisor handed over, validated.

    :raises GraceError: for an fd that is not the listening socket it is said to be.
    """
    return [lst.adopt(fd, name, SUPERVISOR_VAR) for name, fd in image.listeners]


def supervise(image: SupervisorHandoff, sockets: list[socket.socket]) -> int:
    """Supervise generations of ``image.program`` over *sockets*; blocks until stopped and
    returns the exit status."""
    spawner = make_spawner(image.options, image.argv_len)
    watching = image.watching
    watcher = (
        None if watching is None else Watcher(polling=watching.polling, interval=watching.interval)
    )
    try:
        supervisor = Supervisor(
            sockets,
            image.options,
            argv=image.program,
            spawner=spawner,
            banner=image.banner,
            watcher=watcher,
            generation_env=image.generation_env,
        )
        if image.generation:
            supervisor.adopt(image)
        return supervisor.run()
    finally:
        spawner.close()


def make_spawner(options: Options, argv_len: int) -> Spawner:
    """The warm starter when ``options.warm`` and the platform allow it, else the cold one
    (saying why in one log line). *argv_len*: ``len(sys.argv)`` of the program."""
    if not options.warm:
        return Spawner()
    from grace_plugins import warm

    why = warm.unsupported()
    if why is not None:
        get_logger().info("%s: every generation starts cold", why)
        return Spawner()
    try:
        return warm.WarmSpawner(argv_len=argv_len, max_wait=options.ready_timeout / 3)
    except (OSError, GraceError) as exc:
        get_logger().info("warm start unavailable (%s): every generation starts cold", exc)
        return Spawner()


def run_or_exit(
    serve: ServeFunction,
    addresses: Sequence[str | lst.Address],
    options: Options | None = None,
    **kwargs: Any,
) -> NoReturn:
    """:func:`run`, then exit with its status; a :class:`GraceError` becomes one line on
    stderr and exit status 2, never a traceback."""
    try:
        code = run(serve, addresses, options, **kwargs)
    except GraceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = ExitCode.USAGE
    sys.exit(code)
