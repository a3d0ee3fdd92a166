"""A mold: the process that imports one generation's app (``--preload``), then forks its workers.

The master forks it (it shares the master's pages: gunicorn and this package) and never imports
the app itself. The mold imports it as gunicorn's ``--preload`` would (``app.wsgi()``), with
what a first request would import (:mod:`.lazy_imports`: Django's URLconf), bounded by
gunicorn's ``timeout`` (``SIGALRM``: no thread), runs the ready check (``GRACE_READY_PATH``: it
also warms the mold; a copy made before it takes the mold's place if the check leaves a thread:
:mod:`.mold_copy`), closes Django's database connections, freezes the collector
(``gc.freeze()``: the workers keep sharing the pages) and checks that forking is safe
(:func:`~.mold_rules.unsafe`). It answers the master once, on its private socket
(:class:`grace_plugins.wire.Wire`):

* ``{"ready": ms}`` (a copy in its place adds its ``"pid"`` and why, ``"copy"``): then it
  forks a worker per request (``{"fork": age}`` with its heartbeat file, ``SCM_RIGHTS``),
  twice, so that the worker is re-parented to the master (a child subreaper) and gunicorn
  reaps it as its own; it answers ``{"pid": N}``. Asked for a spare (``{"spare": 1}`` with
  the spare's own socket), it forks a copy of itself the same way: idle, it takes this mold's
  place if this one dies;
* ``{"unsafe": why}``: each worker of this generation imports the app itself;
* ``{"failed": why}``: the new code does not load (logged here with its traceback).

It leaves on EOF (the master closed its socket or exited) and on SIGTERM (retired), always by
``os._exit``: the app's ``atexit`` hooks are its workers'.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

from grace_plugins.gunicorn.master import MASTER, ready_timeout
from grace_plugins.gunicorn.mold_copy import CopyBeforeCheck, fork_copy
from grace_plugins.gunicorn.mold_rules import threshold_after_import, unsafe
from grace_plugins.gunicorn.mold_startup import (
    Startup,
    close_database_connections,
    dispose_sqlalchemy_pools,
    shared_fds,
)
from grace_plugins.gunicorn.mold_worker import become_worker
from grace_plugins.wire import Wire, answer_fork, close_fds

#: The collector's second threshold while the app imports: older generations never collected
#: (100,000 young collections: about 70 million allocations). Small enough that an app
#: multiplying the thresholds it finds stays within a C int.
YOUNG_ONLY = 100_000
#: ``os._exit`` itself, taken before any load replaces it (:func:`_quit`).
_real_exit = os._exit
#: Longest the mold waits for its middle child to report the worker's pid.
FORK_REPORT_TIMEOUT = 5.0
#: Signals the mold leaves to the master (a terminal's Ctrl-C or hang-up reaches the whole
#: process group: the master decides) and the ones it gives back their default action.
_LEFT_TO_MASTER = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_DEFAULT = (signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH)


def run_mold(arbiter: Any, gen: int, sock: socket.socket, since: float, others: list[int]) -> None:
    """The mold's life, in the child the master just forked; it ends by ``os._exit``. In a
    worker forked from it, this returns nothing and raises ``SystemExit`` (as gunicorn's own
    workers do: up through the master's frames to the interpreter's exit).

    :param others: fds of the master's other molds (not this one's business)
    """
    try:
        Mold(arbiter, gen, Wire(sock), since).run(others)
    except BaseException:  # noqa: BLE001 - in a mold (or its spare, or its copy): say it, leave
        if _in_a_worker:
            raise  # a worker's exit, on its way to the interpreter's
        with contextlib.suppress(Exception):
            traceback.print_exc()
    _quit()


#: Whether this process is a worker forked from a mold: only a worker's exit may go up through
#: the master's frames (a mold's, a spare's or a copy's would run gunicorn's master code).
_in_a_worker = False


class Mold:
    """One generation's mold (see the module doc)."""

    def __init__(self, arbiter: Any, gen: int, wire: Wire, since: float) -> None:
        self.arbiter = arbiter
        self.gen = gen
        self.wire = wire
        self.since = since
        self.log = arbiter.log
        self.master = arbiter.pid

    def run(self, others: list[int]) -> None:
        # what the master had is never garbage here: frozen, the import's collections do not
        # write to (and so copy) the pages this process still shares with the master
        gc.freeze()
        self._leave_the_master(others)
        answer = self._load()
        try:
            self.wire.send(answer)
        except OSError:  # the master gave up on this generation (its timeout, a stop)
            _quit()
        if "ready" not in answer:
            _quit()
        self.log.info(
            "grace_plugins: generation %s: the app is imported once, in mold %s (%s ms); its"
            " workers are forked from it",
            self.gen,
            os.getpid(),
            answer["ready"],
        )
        while True:
            got = self.wire.receive(None)
            if got is None:
                _quit()  # the master closed our socket, or is gone
            request, fds = got
            if "spare" in request and len(fds) == 1:
                self._fork_spare(fds[0])  # in the spare, back to this loop on its own socket
            elif "fork" in request and len(fds) == 1:
                self._fork(int(request["fork"]), fds[0])
            else:
                self.wire.send({"error": "a fork request without its file"})
                close_fds(fds)

    # -- becoming a mold ---------------------------------------------------------------------------
    def _leave_the_master(self, others: list[int]) -> None:
        MASTER.mold_generation = self.gen  # the workers built here are this generation's
        for sig in _LEFT_TO_MASTER:
            signal.signal(sig, _ignore)
        for sig in _DEFAULT:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, _retired)
        for sibling in self.arbiter.WORKERS.values():  # as gunicorn's own children do
            with contextlib.suppress(OSError):
                sibling.tmp.close()
        close_fds(others)
        with contextlib.suppress(Exception):
            from gunicorn import util

            util._setproctitle(f"mold [{self.arbiter.proc_name}]")

    def _load(self) -> dict[str, Any]:
        """Import the app, check it, freeze it: the answer to the master. In the copy made
        before the ready check (:mod:`.mold_copy`), once it takes this mold's place: its own
        answer."""
        startup = Startup(self.arbiter, self.gen, self.since, self._fail_now)
        deadline = time.monotonic() + ready_timeout(self.arbiter.cfg)
        with _young_collections_only():  # until the app's objects are frozen
            failure = startup.load(deadline)
            if failure is not None:
                return {"failed": failure}
            why = ""
            copy: CopyBeforeCheck | None = None
            if startup.checks_here(os.environ):
                why = self._unsafe_now(startup)  # the import's own leftovers
                if not why:
                    gc.freeze()  # the copy shares what the import built
                    forked = fork_copy(self.wire.sock, _quit)
                    if isinstance(forked, str):  # the copy, in the mold's place
                        return {"ready": _ms_since(startup), "pid": os.getpid(), "copy": forked}
                    copy = forked
            failure = startup.check(os.environ, deadline)
            if failure is None and not why:
                why = self._unsafe_now(startup)
            if copy is not None and failure is None and why and copy.hand_over(why):
                _quit()
            elif copy is not None:
                copy.dismiss()
            if failure is not None:
                return {"failed": failure}
            # no gc.collect() unless something was found: what it freed would leave holes in
            # the pages the workers share, their first allocations would copy them (measured:
            # more memory, and 20 ms more)
            gc.freeze()  # the collector must not touch (and so copy) the shared pages
        if why:
            return {"unsafe": why}
        return {"ready": _ms_since(startup)}

    def _unsafe_now(self, startup: Startup) -> str:
        """Why forking from this process is not safe now ("" if it is), once the idle database
        connections are closed (Django's; SQLAlchemy's pools if something was found)."""
        close_database_connections()
        why = self._why_unsafe(startup, settle=0.5)
        if why:  # a socket the import dropped in a reference cycle: collected, it is closed
            dispose_sqlalchemy_pools()  # (and one idle in a pool: closed by its engine)
            gc.collect()  # (a thread it cannot end: no second wait for threads)
            why = self._why_unsafe(startup, settle=0.0)
        return why

    def _why_unsafe(self, startup: Startup, settle: float) -> str:
        ours = {self.wire.sock.fileno(), *_listener_fds(self)}
        return _why_unsafe(startup.shared_before, ours, settle, startup.ran)

    def _fail_now(self, reason: str) -> NoReturn:
        """The import cannot go on (it hangs, or asked to exit): answer, leave."""
        with contextlib.suppress(OSError):
            self.wire.send({"failed": reason})
        _quit()

    # -- forking a worker --------------------------------------------------------------------------
    def _fork(self, age: int, tmp_fd: int) -> None:
        """Fork the worker of gunicorn's *age* (with its heartbeat file); answer its pid. In
        the worker this does not return (see :func:`run_mold`)."""
        middle = self._fork_twice(tmp_fd, "the worker")
        if middle is None:
            return
        self.wire.sock.close()
        global _in_a_worker
        _in_a_worker = True
        try:
            become_worker(self.arbiter, age, tmp_fd, self.since, middle)
        except SystemExit:
            raise  # the worker's exit, as gunicorn's own workers leave
        except BaseException:  # noqa: BLE001 - never back into the master's frames
            traceback.print_exc()
            os._exit(1)

    def _fork_spare(self, sock_fd: int) -> None:
        """Fork this mold's spare: a copy that waits, on its own socket (*sock_fd*), until the
        master needs it (this mold died: killed, or chosen by the OOM killer), so that the
        generation's respawns still run the code it serves, whatever is on disk. In the
        spare this returns, as a mold with nothing forked yet."""
        if self._fork_twice(sock_fd, "the spare") is None:
            return
        self.wire.sock.close()
        self.wire = Wire(socket.socket(fileno=sock_fd))
        with contextlib.suppress(Exception):
            from gunicorn import util

            util._setproctitle(f"mold spare [{self.arbiter.proc_name}]")

    def _fork_twice(self, passed_fd: int, what: str) -> int | None:
        """Fork *what* twice, so that it becomes the master's child (a subreaper), and answer
        its pid; *passed_fd* is its own, closed here. In *what*: the pid of the middle child
        (gone at once); here: ``None``."""
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush()
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.close(read_end)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                return me
            with contextlib.suppress(OSError):
                os.write(write_end, str(pid).encode())
            os._exit(0)
        os.close(write_end)
        os.close(passed_fd)
        try:
            answer_fork(self.wire, read_end, middle, FORK_REPORT_TIMEOUT, what)
        except OSError:  # the master closed this mold's socket (retired it, or is gone):
            _quit()  # no one awaits the answer; leave quietly
        return None


@contextlib.contextmanager
def _young_collections_only() -> Iterator[None]:
    """While the app imports, the collector looks at young objects only: the import's garbage
    is freed as it goes (its memory reused by the import), and the import never walks, again
    and again, the older objects it built (about 10 % of a Django import). A threshold, not
    ``gc.disable()``: an app that disables the collector at import keeps it disabled."""
    before = gc.get_threshold()
    young_only = (before[0], YOUNG_ONLY, before[2])
    gc.set_threshold(*young_only)
    try:
        yield
    finally:
        gc.set_threshold(*threshold_after_import(before, young_only, gc.get_threshold()))


def _listener_fds(mold: Mold) -> list[int]:
    return [listener.fileno() for listener in mold.arbiter.LISTENERS]


#: How long a Python thread alive after the import may take to end before it counts (one
#: still running by then is a library's worker: waiting longer would only delay the fallback).
PYTHON_THREAD_SETTLE = 0.1


def _why_unsafe(shared_before: set[str], ours: set[int], settle: float, ran: str) -> str:
    """Why forking from this process is not safe now ("" if it is), once the threads had up
    to *settle* seconds to end (Python's: :data:`PYTHON_THREAD_SETTLE` at most); *ran*: what
    ran here, for the reason to name."""
    native = 0
    began = time.monotonic()
    while True:  # a thread that just ended (the ready check's) may linger a moment in /proc
        others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        native = _task_count() - 1 - len(others)
        waited = time.monotonic() - began
        if not others and native <= 0:
            break
        if waited >= settle or (others and waited >= min(settle, PYTHON_THREAD_SETTLE)):
            break
        time.sleep(0.01)
    kept = {
        fd: what
        for fd, what in shared_fds().items()
        if fd not in ours and what not in shared_before
    }
    sockets = [f"fd {fd}: {what}" for fd, what in kept.items() if what.startswith("socket:")]
    files = [f"fd {fd}: {what}" for fd, what in kept.items() if not what.startswith("socket:")]
    return unsafe(others, native, sockets, files, ran)


def _ms_since(startup: Startup) -> int:
    return round((time.monotonic() - startup.began) * 1000)


def _task_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _ignore(sig: int, frame: Any) -> None:
    pass


def _retired(sig: int, frame: Any) -> None:
    _quit()


def _quit() -> NoReturn:
    """Leave without the app's ``atexit`` hooks (they are its workers'). By the real
    ``os._exit``: while the app loads it is replaced (an exit the app asks for is a failure),
    and a failure that leaves from there (a hang cut by the timer) would come back here."""
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    _real_exit(0)
