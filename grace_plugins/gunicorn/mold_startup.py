"""A mold's import of the app and its ready check: bounded, and every failure is a reason.

The import is gunicorn's ``--preload`` import (``app.wsgi()``), bounded by gunicorn's
``timeout`` with ``SIGALRM`` (a watchdog thread would make the mold unsafe to fork). An exit the
app asks for (``sys.exit(N)``, ``os._exit(N)`` from Python) is a load failure, as in a worker
(:func:`~grace_plugins.gunicorn.boot.exits_are_failures`): the master rolls the generation back
and never sees the status. Each failure is logged here once, with its traceback, and with
``--reload`` what the import tried goes to the master's watcher (the fix is heard).

What the mold must not hand over to its workers is here too: the fds they would share to
their harm (:func:`shared_fds`), and the idle database connections it closes first.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, NoReturn

from grace_plugins.gunicorn.boot import exits_are_failures, log_not_loaded, ready_path
from grace_plugins.gunicorn.handover import workers_owner
from grace_plugins.gunicorn.lazy_imports import import_lazy_parts
from grace_plugins.gunicorn.master import MASTER
from grace_plugins.gunicorn.release import stay_in_this_release
from grace_plugins.loaded import tried_spec
from grace_plugins.readycheck import NotReady, check_ready, host_and_port, time_for_check
from grace_plugins.watchspec import is_glob


class Startup:
    """One mold's import (:meth:`load`) and ready check (:meth:`check`)."""

    def __init__(
        self, arbiter: Any, gen: int, since: float, fail: Callable[[str], NoReturn]
    ) -> None:
        """*fail*: called with the reason when the mold must leave at once (a hang, an
        ``os._exit``); it answers the master and does not return."""
        self.arbiter = arbiter
        self.gen = gen
        self.since = since
        self.fail = fail
        self.log = arbiter.log
        self.began = time.monotonic()
        self.app: Any = None
        #: what ran in this process since forking was last found safe: the import, then the
        #: ready check's request
        self.ran = "the import"
        #: what was open before the import (what it opens and keeps makes forking unsafe)
        self.shared_before = set(shared_fds().values())

    def load(self, deadline: float) -> str | None:
        """Import the app; the reason it failed, or None."""
        signal.signal(signal.SIGALRM, self._too_late)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.01))
        try:
            stay_in_this_release(self.arbiter.cfg.chdir)
            with exits_are_failures(self._exit_while_loading):
                self.app = self.arbiter.app.wsgi()
                import_lazy_parts()  # the views too: a broken one fails here, shared if not
        except Exception as exc:  # AppExited (sys.exit) included
            reason = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return self._failed(reason, exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return None

    def checks_here(self, environ: Mapping[str, str]) -> bool:
        """Whether :meth:`check` will send a request in this process (a bad value is the
        check's failure, not a request)."""
        try:
            path = ready_path(environ)
        except RuntimeError:
            return False
        return path is not None and workers_owner(self.arbiter.cfg) is None

    def check(self, environ: Mapping[str, str], deadline: float) -> str | None:
        """With ``GRACE_READY_PATH``: GET it from the app in-process (as each worker does
        too; here it also warms the mold), unless the workers run as another user; the reason
        it failed, or None."""
        try:
            path = ready_path(environ)
        except RuntimeError as exc:
            return self._failed(str(exc))
        if path is None:
            return None
        if workers_owner(self.arbiter.cfg) is not None:
            # --user/--group: the mold has the master's privileges, and a request must never
            # run with them (a file it writes would be the master's); each worker checks
            self.log.info(
                "grace_plugins: generation %s: the ready check runs in each worker only (the"
                " workers run as another user than the mold)",
                self.gen,
            )
            return None
        listener = self.arbiter.LISTENERS[0]
        host, port = host_and_port(getattr(listener, "sock", listener))
        timeout = time_for_check(deadline, time.monotonic())
        scheme = "https" if self.arbiter.cfg.is_ssl else "http"
        self.ran = f"the ready check (GET {path})"  # the import was found safe before it
        try:
            check_ready(self.app, path, host=host, port=port, timeout=timeout, scheme=scheme)
        except NotReady as exc:
            return self._failed(str(exc))
        return None

    # -- failures ---------------------------------------------------------------------------------
    def _failed(self, reason: str, exc: BaseException | None = None, where: str = "") -> str:
        if self.gen > 1:
            log_not_loaded(self.log, self.gen, reason, exc, where)
        else:
            self.log.error(
                "grace_plugins: the app does not load in the mold (%s)%s",
                reason,
                f"\n{where.rstrip()}" if where else "",
                exc_info=exc,
            )
        self._report_tried(exc)
        return reason

    def _exit_while_loading(self, reason: str, where: str) -> NoReturn:
        self.fail(self._failed(reason, where=where))

    def _too_late(self, sig: int, frame: FrameType | None) -> None:
        """``SIGALRM``: the import hangs. Say where, then fail (the master kills a mold that
        hangs where no signal handler runs, in C)."""
        timeout = self.arbiter.cfg.timeout
        where = "".join(traceback.format_stack(frame)).rstrip() if frame else "(unknown)"
        reason = f"not ready after {timeout:g} s (does the app hang at import?)"
        self.log.error(
            "grace_plugins: mold %s (generation %s) %s; it was at:\n%s",
            os.getpid(),
            self.gen,
            reason,
            where,
        )
        self._report_tried(None)
        self.fail(reason)

    def _report_tried(self, exc: BaseException | None) -> None:
        """With ``--reload``: what the import tried, for the master's watcher."""
        cfg = self.arbiter.cfg
        if not cfg.reload:
            return
        extra = [name for name in cfg.reload_extra_files or () if not is_glob(name)]
        with contextlib.suppress(Exception):
            spec = tried_spec(exc, self.since, extra_files=extra)
            if MASTER.store is not None:
                MASTER.store.record_spec(self.gen, "mold", spec.encode())


def shared_fds() -> dict[int, str]:
    """This process's fds that every process forked from it would share to their harm, and
    what each is: sockets (``socket:[inode]``: a database or cache connection) and named
    regular files open for reading and writing (their path: an SQLite database, a ``dbm``
    file, whose locks and offset the workers would share). Shared as under gunicorn's own
    ``--preload``: files open for reading only, or for appending (a log), and files already
    unlinked (memory meant to be shared, as ``multiprocessing.Value`` maps it). Linux only
    (elsewhere: none)."""
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                fd = int(name)
                what = os.readlink(f"/proc/self/fd/{name}")
                if what.startswith("socket:") or _read_write_file(fd):
                    found[fd] = what
    return found


def _read_write_file(fd: int) -> bool:
    flags, info = fcntl.fcntl(fd, fcntl.F_GETFL), os.fstat(fd)
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_nlink > 0
        and flags & os.O_ACCMODE == os.O_RDWR
        and not flags & os.O_APPEND
    )


def close_database_connections() -> None:
    """Close the connections Django opened during the import or the ready check, as
    readthedocs' gunicorn config does before forking (each worker opens its own). Django is
    not imported here: only used if the app loaded it."""
    db = sys.modules.get("django.db")
    connections = getattr(db, "connections", None)
    if connections is not None:
        with contextlib.suppress(Exception):
            connections.close_all()


def dispose_sqlalchemy_pools() -> None:
    """Empty the pool of every SQLAlchemy engine (``Engine.dispose()``: its idle connections
    close, each worker opens its own), as SQLAlchemy advises before a fork: a connection the
    import or the ready check left in a pool (Flask-SQLAlchemy's ``create_all()``) must not be
    shared. Only once the check found a socket or a file: it walks every object. SQLAlchemy is
    not imported here: only used if the app loaded it."""
    engine_type = getattr(sys.modules.get("sqlalchemy.engine"), "Engine", None)
    if not isinstance(engine_type, type):
        return
    # type(), not isinstance(): a proxy's __class__ may raise outside its context
    for engine in [one for one in gc.get_objects() if issubclass(type(one), engine_type)]:
        with contextlib.suppress(Exception):
            engine.dispose()
