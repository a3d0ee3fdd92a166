"""A new worker's boot: the app import is bounded, and broken code never halts the master.

Gunicorn halts its master when a worker exits with 3 (``WORKER_BOOT_ERROR``) or 4
(``APP_LOAD_ERROR``). Once something serves, a worker whose app does not load records the
failure (the reload is rolled back) and exits with :data:`EXIT_NOT_LOADED` instead, whatever
ended the import: an exception, ``sys.exit(N)``, or ``os._exit(N)`` called from Python. An
import that hangs is cut at the ready timeout. A respawn that meets broken code waits
(exponential back-off) before it exits, so the master does not fork in a hot loop. At the very
first start gunicorn's own behaviour is kept.

With ``GRACE_READY_PATH`` set (the environment or ``raw_env``), the worker then calls its own
app with ``GET PATH`` before it accepts (see :mod:`grace_plugins.readycheck`); a failed check
is a load failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from grace_plugins.gunicorn.lazy_imports import import_lazy_parts
from grace_plugins.gunicorn.master import ready_timeout
from grace_plugins.gunicorn.records import BOOT, FAILED, READY, RecordStore
from grace_plugins.gunicorn.verdicts import Member
from grace_plugins.gunicorn.watch import Watch
from grace_plugins.options import BY_NAME, InvalidValue
from grace_plugins.readycheck import NotReady, check_ready, host_and_port, time_for_check
from grace_plugins.watch_report import WatchReporter

#: Exit status of a worker whose app did not load while older workers serve. Not gunicorn's
#: 3 (WORKER_BOOT_ERROR) or 4 (APP_LOAD_ERROR): those make the master halt.
EXIT_NOT_LOADED = 75
#: gunicorn's own status for an app that does not load: used when nothing else serves.
APP_LOAD_ERROR = 4
#: Longest back-off of a respawned worker that meets code that does not load.
MAX_BACKOFF = 60.0
#: The variable that turns the ready check on: ``GRACE_READY_PATH=/healthz``.
READY_PATH_VAR = "GRACE_READY_PATH"
#: The real ``os._exit``: our own exits never pass through the guard of :meth:`Boot.load`.
_real_exit = os._exit


class AppExited(Exception):
    """The app's code ended this worker while it was loading (``sys.exit``, ``os._exit``)."""


@contextlib.contextmanager
def exits_are_failures(
    on_os_exit: Callable[[str, str], NoReturn], quitting: Callable[[], bool] = lambda: False
) -> Iterator[None]:
    """While the app loads in this process, an exit it asks for is a load failure:
    ``sys.exit(N)`` raises :class:`AppExited`, and ``os._exit(N)`` called from Python calls
    *on_os_exit* (the reason, and the stack it was called from) instead. A process the app
    forks meanwhile keeps the real ``os._exit``. The ``SystemExit`` of a quit signal
    (*quitting* says so: gunicorn's ``handle_quit`` raises it wherever the import is) is an
    exit, not the app's failure."""
    me = os.getpid()

    def exit_while_loading(status: int) -> NoReturn:
        if os.getpid() != me:
            _real_exit(status)
        where = "".join(traceback.format_stack()[:-1])
        reason = f"the app called os._exit({status}) while loading"
        on_os_exit(reason, f"Traceback (most recent call last):\n{where}")

    os_exit = os._exit
    setattr(os, "_exit", exit_while_loading)  # noqa: B010 (a module's function)
    try:
        yield
    except SystemExit as exc:
        if quitting():
            raise
        failure = AppExited(f"the app called sys.exit({exc.code!r}) while loading")
        raise failure.with_traceback(exc.__traceback__) from None
    finally:
        setattr(os, "_exit", os_exit)  # noqa: B010


def log_not_loaded(
    log: Any, gen: int, reason: str, exc: BaseException | None = None, where: str = ""
) -> None:
    """The one error line (and traceback) of a generation whose new code does not load."""
    log.error(
        "grace_plugins: generation %s: the new code does not load (%s); the running"
        " workers keep serving the previous code. Fix it and send HUP again.%s",
        gen,
        reason,
        f"\n{where.rstrip()}" if where else "",
        exc_info=exc,
    )


def ready_path(environ: Mapping[str, str]) -> str | None:
    """The ready check's path from *environ*, or None when it is off.

    :raises RuntimeError: one line, for a value that is not a URL path.
    """
    try:
        path: str | None = BY_NAME["ready_path"].parse(environ.get(READY_PATH_VAR))
    except InvalidValue as exc:
        raise RuntimeError(
            f"{READY_PATH_VAR} {exc}. Set it (or raw_env in gunicorn.conf.py) to a path of"
            " your app that answers GET, or unset it."
        ) from None
    return path


class Boot:
    """The boot of one worker (*member*), from the fork to ready or to its exit.

    :param listeners: the worker's listener copies (closed before a back-off: a process that
        will not serve must not keep the port bound)
    :param heartbeat: gunicorn's ``notify`` (the watchdog keeps the worker alive for
        gunicorn while the ready timeout, ours, runs)
    :param stop_waiting: whether a SIGTERM arrived (ends a back-off early)
    :param reporter: with ``--reload``, where a failure says what it tried to load (the
        module that broke it is the file a developer fixes next)
    """

    def __init__(
        self,
        store: RecordStore,
        member: Member,
        watch: Watch,
        cfg: Any,
        log: Any,
        listeners: list[Any],
        heartbeat: Callable[[], None],
        stop_waiting: Callable[[], bool],
        reporter: WatchReporter | None = None,
    ) -> None:
        self.store = store
        self.listeners = listeners
        self.member = member
        self.watch = watch
        self.cfg = cfg
        self.log = log
        self.heartbeat = heartbeat
        self.stop_waiting = stop_waiting
        self.reporter = reporter
        self.timeout = ready_timeout(cfg)
        self.started = time.monotonic()
        #: when the watchdog cuts the boot (infinite while the ready check, bounded itself,
        #: runs: its own verdict, not the watchdog, says what happened)
        self.deadline = self.started + self.timeout
        self.settled = threading.Event()  # ready or failed: ends the watchdog

    def start(self) -> None:
        """Record the boot and start the watchdog (before the import)."""
        self.store.record(self.member, BOOT)
        threading.Thread(target=self._watchdog, name="grace-boot", daemon=True).start()

    def something_serves(self) -> bool:
        """Whether a failure here must not halt the master: a generation opened by a HUP, or
        some worker of this master was ready (known to the master before it forked us, or
        recorded since)."""
        return self.member.gen >= 2 or self.store.ever_ready()

    # -- the import -------------------------------------------------------------------------------
    def load(self, load_wsgi: Callable[[], None], quitting: Callable[[], bool]) -> None:
        """Run gunicorn's *load_wsgi*. Once something serves, an exit the import asks for
        becomes a load failure: gunicorn halts its master on a worker's 3 or 4, whoever chose
        the status. At the very first start gunicorn's own handling is kept. *quitting*: a
        quit signal (the master's quick stop) ended the import, not the app."""
        if not self.something_serves():
            load_wsgi()
            import_lazy_parts()
            return
        with exits_are_failures(self._exit_while_loading, quitting):
            load_wsgi()
            import_lazy_parts()

    def _exit_while_loading(self, reason: str, where: str) -> NoReturn:
        """``os._exit`` while the app loads: record the failure, exit with our status."""
        _real_exit(self._not_loaded(reason, where=where))

    def check(self, app: Any, listener: Any, is_ssl: bool) -> None:
        """With ``GRACE_READY_PATH``: GET it from the app in-process before accepting; a
        failure (500 or more, an exception, no answer within what is left of the ready
        timeout) exits like an app that does not load."""
        try:
            path = ready_path(os.environ)
        except RuntimeError as exc:
            path, reason = None, str(exc)
        else:
            if path is None:
                return
            host, port = host_and_port(getattr(listener, "sock", listener))
            timeout = time_for_check(self.deadline, time.monotonic())
            self.deadline = math.inf
            try:
                scheme = "https" if is_ssl else "http"
                check_ready(app, path, host=host, port=port, timeout=timeout, scheme=scheme)
                return
            except NotReady as exc:
                reason = str(exc)
        sys.exit(self._not_loaded(reason))

    def ready(self) -> None:
        """The worker accepts: record it (the verdicts count it) and log the boot time."""
        self.settled.set()
        if not self.store.record(self.member, READY):
            self.log.error(
                "grace_plugins: worker %s cannot write to %s: reloads cannot wait for it to be"
                " ready. Let the workers' user (--user) write there, or set TMPDIR to a"
                " directory it can.",
                self.member.pid,
                self.store.path,
            )
        self.log.info(
            "grace_plugins: worker %s (generation %s) ready after %d ms",
            self.member.pid,
            self.member.gen,
            (time.monotonic() - self.started) * 1000,
        )

    # -- failures ---------------------------------------------------------------------------------
    def _watchdog(self) -> None:
        """Bound the app import: a worker not ready in time fails (a hang must not block)."""
        main = threading.main_thread().ident
        while not self.settled.wait(1.0):
            if time.monotonic() < self.deadline:
                self.heartbeat()  # the ready timeout is ours; spare gunicorn's heartbeat kill
                continue
            frame = sys._current_frames().get(main or 0)
            where = "".join(traceback.format_stack(frame)).rstrip() if frame else "(unknown)"
            reason = f"not ready after {self.timeout:g} s (does the app hang at import?)"
            self.log.error(
                "grace_plugins: worker %s (generation %s) %s; it was at:\n%s",
                self.member.pid,
                self.member.gen,
                reason,
                where,
            )
            _real_exit(self._fail(reason))

    def failed(self, exc: Exception) -> NoReturn:
        """The import raised *exc* while something serves: record it, exit with our status."""
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()
        sys.exit(self._not_loaded(reason, exc))

    def _not_loaded(self, reason: str, exc: BaseException | None = None, where: str = "") -> int:
        """Log (the traceback once per generation) and record that the app did not load;
        back off if this worker is a respawn. Returns the exit status to use."""
        self.settled.set()
        if self.store.claim("logged", self.member.gen):
            log_not_loaded(self.log, self.member.gen, reason, exc, where)
        else:
            self.log.error(
                "grace_plugins: worker %s (generation %s): the code on disk does not load: %s",
                self.member.pid,
                self.member.gen,
                reason,
            )
        status = self._fail(reason, exc)
        if not self.watch.is_member():
            self._back_off()
        return status

    def _fail(self, reason: str, exc: BaseException | None = None) -> int:
        """Record that this worker's app did not load; return the exit status to use."""
        if self.reporter is not None:
            self.reporter.tried(exc)
        if not self.something_serves():
            return APP_LOAD_ERROR
        self.store.record(self.member, FAILED, reason)
        if self.watch.is_member():
            self.watch.verdict_on(self.member.gen)  # decided (and logged) before we exit
        return EXIT_NOT_LOADED

    def _back_off(self) -> None:
        """A respawn met broken code: wait before exiting so gunicorn does not fork hot."""
        count = self.store.bump_backoff()
        delay = min(MAX_BACKOFF, 2.0 ** (count - 1))
        self.log.error(
            "grace_plugins: the code on disk does not load (%s failed respawns in a row); this"
            " worker exits in %g s, then gunicorn respawns it. Fix the code and send HUP.",
            count,
            delay,
        )
        for listener in self.listeners:
            listener.close()
        deadline = time.monotonic() + delay
        while not self.stop_waiting() and time.monotonic() < deadline:
            self.heartbeat()
            time.sleep(0.2)
