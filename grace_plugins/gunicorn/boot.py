"""A new worker's boot: the app import is bounded, and broken code never halts the master.

Gunicorn halts its master when a worker exits with 3 (``WORKER_BOOT_ERROR``) or 4
(``APP_LOAD_ERROR``). Once some worker of this master was ever ready, a worker whose app does
not load records the failure in the gate (the reload is rolled back) and exits with
:data:`EXIT_NOT_LOADED` instead, whatever ended the import: an exception, ``sys.exit(N)``, or
``os._exit(N)`` called from Python. An import that hangs is cut at the ready timeout. A respawn
that meets broken code waits (exponential back-off) before it exits, so the master does not fork
in a hot loop. At the very first start gunicorn's own behaviour is kept.

With ``GRACE_READY_PATH`` set (the environment or ``raw_env``), the worker then calls its own
app with ``GET PATH`` before it accepts (see :mod:`grace_plugins.readycheck`); a failed check
is a load failure.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

from grace_plugins.gunicorn.gate import Member
from grace_plugins.gunicorn.master import ready_timeout
from grace_plugins.gunicorn.serve import DrainingWorker
from grace_plugins.options import BY_NAME, InvalidValue
from grace_plugins.readycheck import NotReady, check_ready, host_and_port

#: Exit status of a worker whose app did not load while older workers serve. Not gunicorn's
#: 3 (WORKER_BOOT_ERROR) or 4 (APP_LOAD_ERROR): those make the master halt.
EXIT_NOT_LOADED = 75
#: gunicorn's own status for an app that does not load: used when nothing else serves.
APP_LOAD_ERROR = 4
#: Longest back-off of a respawned worker that meets code that does not load.
MAX_BACKOFF = 60.0
#: The variable that turns the ready check on: ``GRACE_READY_PATH=/healthz``.
READY_PATH_VAR = "GRACE_READY_PATH"
#: The boot watchdog waits this much longer while the ready check (bounded itself) runs.
CHECK_SLACK = 2.0
#: The real ``os._exit``: our own exits never pass through the guard of ``load_wsgi``.
_real_exit = os._exit


class AppExited(Exception):
    """The app's code ended this worker while it was loading (``sys.exit``, ``os._exit``)."""


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


class BootingWorker(DrainingWorker):
    """The boot of a worker of a generation (``gate``, ``member``: see ``worker.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settled = threading.Event()  # set once ready or failed: ends the boot watchdog
        self._boot_start = 0.0
        self._boot_deadline = 0.0

    def init_process(self) -> None:
        self.member = Member(self.generation, self._age, os.getpid())
        self._boot_start = time.monotonic()
        self._boot_deadline = self._boot_start + ready_timeout(self.cfg)
        self.gate.record(self.member, "boot")
        threading.Thread(target=self._watch_boot, name="grace-boot", daemon=True).start()
        try:
            super().init_process()  # imports the app, then run()
        except SystemExit:
            raise
        except Exception as exc:
            if self.booted or not self.gate.ever_ready():
                raise  # nothing else serves: gunicorn's own handling (the master halts)
            self._load_failed(exc)

    def load_wsgi(self) -> None:
        """Import the app. Once something serves, an exit the import asks for becomes a load
        failure: gunicorn halts its master on a worker's 3 or 4, whoever chose the status. At
        the very first start gunicorn's own handling is kept."""
        if not self.gate.ever_ready():
            super().load_wsgi()
            return
        os_exit = os._exit
        setattr(os, "_exit", self._exit_while_loading)  # noqa: B010 (a module's function)
        try:
            super().load_wsgi()
        except SystemExit as exc:
            failure = AppExited(f"the app called sys.exit({exc.code!r}) while loading")
            raise failure.with_traceback(exc.__traceback__) from None
        finally:
            setattr(os, "_exit", os_exit)  # noqa: B010

    def _exit_while_loading(self, status: int) -> NoReturn:
        """``os._exit`` while the app loads: record the failure, exit with our status."""
        if os.getpid() != self.member.pid:  # a process the app forked: its own business
            _real_exit(status)
        where = "".join(traceback.format_stack()[:-1])
        reason = f"the app called os._exit({status}) while loading"
        _real_exit(self._not_loaded(reason, where=f"Traceback (most recent call last):\n{where}"))

    def _ready_check(self) -> None:
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
            listener = self.sockets[0]
            host, port = host_and_port(getattr(listener, "sock", listener))
            left = max(1.0, self._boot_deadline - time.monotonic())
            self._boot_deadline = time.monotonic() + left + CHECK_SLACK
            try:
                scheme = "https" if self.cfg.is_ssl else "http"
                check_ready(self.wsgi, path, host=host, port=port, timeout=left, scheme=scheme)
                return
            except NotReady as exc:
                reason = str(exc)
        sys.exit(self._not_loaded(reason))

    def _watch_boot(self) -> None:
        """Bound the app import: a worker not ready in time fails (a hang must not block)."""
        limit = ready_timeout(self.cfg)
        main = threading.main_thread().ident
        while not self._settled.wait(1.0):
            if time.monotonic() < self._boot_deadline:
                self.notify()  # the ready timeout is ours; spare gunicorn's heartbeat kill
                continue
            frame = sys._current_frames().get(main or 0)
            where = "".join(traceback.format_stack(frame)).rstrip() if frame else "(unknown)"
            reason = f"not ready after {limit:g} s (does the app hang at import?)"
            self.log.error(
                "grace_plugins: worker %s (generation %s) %s; it was at:\n%s",
                self.member.pid,
                self.generation,
                reason,
                where,
            )
            _real_exit(self._fail(reason))

    def _load_failed(self, exc: Exception) -> NoReturn:
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()
        sys.exit(self._not_loaded(reason, exc))

    def _not_loaded(self, reason: str, exc: BaseException | None = None, where: str = "") -> int:
        """Log (the traceback once per generation) and record that the app did not load;
        back off if this worker is a respawn. Returns the exit status to use."""
        self._settled.set()
        if self.gate.claim("logged", self.generation):
            self.log.error(
                "grace_plugins: generation %s: the new code does not load (%s); the running"
                " workers keep serving the previous code. Fix it and send HUP again.%s",
                self.generation,
                reason,
                f"\n{where.rstrip()}" if where else "",
                exc_info=exc,
            )
        else:
            self.log.error(
                "grace_plugins: worker %s (generation %s): the code on disk does not load: %s",
                self.member.pid,
                self.generation,
                reason,
            )
        status = self._fail(reason)
        if not self._is_member():
            self._back_off()
        return status

    def _fail(self, reason: str) -> int:
        """Record that this worker's app did not load; return the exit status to use."""
        if not self.gate.ever_ready():
            return APP_LOAD_ERROR
        self.gate.record(self.member, "failed", reason)
        if self._is_member():
            self._check_own()
        return EXIT_NOT_LOADED

    def _back_off(self) -> None:
        """A respawn met broken code: wait before exiting so gunicorn does not fork hot."""
        count = self.gate.bump_backoff()
        delay = min(MAX_BACKOFF, 2.0 ** (count - 1))
        self.log.error(
            "grace_plugins: the code on disk does not load (%s failed respawns in a row); this"
            " worker exits in %g s, then gunicorn respawns it. Fix the code and send HUP.",
            count,
            delay,
        )
        for listener in self.sockets:
            listener.close()
        deadline = time.monotonic() + delay
        while not self._term_pending and time.monotonic() < deadline:
            self.notify()
            time.sleep(0.2)

    def _is_member(self) -> bool:
        return self.generation >= 2 and self.member in self.gate.members(self.generation)
