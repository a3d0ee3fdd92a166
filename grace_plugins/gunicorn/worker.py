"""The worker class behind ``gunicorn -k grace_plugins.Worker`` (see :mod:`grace_plugins.gunicorn`
for the design). It is gunicorn's threaded worker (``gthread``) with four changes:

* every connection is counted in a :class:`~grace_plugins.drain.ConnectionTracker`, and a stop
  is a drain: close this worker's copies of the listeners, finish what is in flight, answer
  requests on idle keep-alive connections with ``Connection: close``, close connections idle past
  ``keepalive`` (not gthread's 2 s linger), give up at ``graceful_timeout``; one log line;
* a SIGTERM that a reload sent is held until the new generation is ready (then drain) or rolled
  back (then keep serving), through the records of :mod:`grace_plugins.gunicorn.gate`;
* an app that does not load in a new worker, or does not load within the ready timeout, exits
  with :data:`EXIT_NOT_LOADED` instead of gunicorn's 3/4 (which halt the master) as long as
  older workers serve; a respawn that meets broken code waits (exponential back-off) before it
  exits, so the master does not fork in a hot loop;
* the master remembers generations: each new ``Config`` (start, every HUP) is a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import inspect
import os
import selectors
import signal
import sys
import threading
import time
import traceback
from functools import partial
from typing import Any

from gunicorn.workers import gthread

from grace_plugins.drain import ConnectionTracker
from grace_plugins.errors import GraceError
from grace_plugins.gunicorn.gate import (
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    STOPPING,
    GateDir,
    Member,
    pid_alive,
    pid_list,
)
from grace_plugins.gunicorn.notify import MasterNotifier
from grace_plugins.state import merge_state, merge_upgrade, state_path

#: Exit status of a worker whose app did not load while older workers serve. Not gunicorn's
#: 3 (WORKER_BOOT_ERROR) or 4 (APP_LOAD_ERROR): those make the master halt.
EXIT_NOT_LOADED = 75
#: gunicorn's own status for an app that does not load: used when nothing else serves.
APP_LOAD_ERROR = 4
#: Longest back-off of a respawned worker that meets code that does not load.
MAX_BACKOFF = 60.0
#: A SIGTERM this long after a rollback verdict is a stop, not the reload's (delivery slack).
TERM_SLACK = 0.5
#: How often a worker that waits for a verdict looks at the records.
POLL = 0.1
#: Added to the age of workers that outlived a rolled-back generation (see ``Worker.age``).
ROLLED_BACK_AGE_BONUS = 1_000_000_000
# gthread's internals changed across releases: tolerate what older ones lack (24.1+).
_DEFER = getattr(gthread, "_DEFER", object())
_GRACEFUL_CLOSE = "graceful" in inspect.signature(gthread.TConn.close).parameters


def ready_timeout(cfg: Any) -> float:
    """How long a new worker may take to import the app: gunicorn's ``timeout`` (30 s if 0)."""
    return float(cfg.timeout) if cfg.timeout and cfg.timeout > 0 else 30.0


def _noop() -> None:
    pass


def _ignore_signal(sig: int, frame: Any) -> None:
    pass


def _remove_gate(gate: GateDir, owner: int) -> None:
    if os.getpid() == owner:  # workers inherit the atexit list; only the master removes it
        gate.remove()
        with contextlib.suppress(GraceError, OSError):
            os.unlink(state_path(owner))


class _Master:
    """What the master remembers across reloads; our module stays loaded in the master."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.gate: GateDir | None = None
        self.cfg: Any = None
        self.generation = 0
        # gunicorn loads the worker class before ``Arbiter.start()``: see gunicorn_notify
        self.systemd = MasterNotifier.take_from_environment()

    def generation_for(self, cfg: Any, log: Any, age: int) -> tuple[int, GateDir]:
        """The generation of a worker built (in the master, before fork) with *cfg*."""
        if self.pid != os.getpid() or self.gate is None:
            self.pid, self.gate, self.cfg, self.generation = os.getpid(), GateDir.create(), None, 0
            atexit.register(_remove_gate, self.gate, self.pid)
            # what ``grace-plugins reload/status --pid <master>`` read (see grace_plugins.state)
            merge_state(self.pid, started=time.time(), upgrades=0, in_progress=False)
            self.systemd.master_started()
        if cfg is not self.cfg:
            self.cfg = cfg
            self.generation += 1
            self.gate.open_generation(self.generation, cfg.workers, ready_timeout(cfg), age)
            if self.generation > 1:
                _announce_reload(self.generation, cfg, log)
                merge_state(self.pid, in_progress=True)
                self.systemd.reloading(self.generation, cfg.workers)
        return self.generation, self.gate

    def poll(self, gate: GateDir) -> None:
        """Tell systemd about a verdict, then record it (see gunicorn_notify)."""
        reported = self.systemd.poll(gate)
        if reported is not None:
            gen, verdict = reported
            status = PROMOTED if verdict == PROMOTED else ROLLED_BACK
            record_verdict(os.getpid(), gate, gen, status, verdict)


MASTER = _Master()


def record_verdict(master: int, gate: GateDir, gen: int, status: str, why: str) -> None:
    """Record the verdict on *gen* in the master's state file, for ``grace-plugins reload``
    and ``status`` (see grace_plugins.state)."""
    pids = pid_list(gate.members(gen))
    serving = {"generation": gen, "generation_pid": pids, "generation_since": time.time()}
    if gen == 1:
        if status == PROMOTED:
            merge_state(master, **serving)
    elif status == PROMOTED:
        merge_upgrade(master, "ok", f"generation {gen} ready (workers {pids})", **serving)
    elif status == ROLLED_BACK:
        merge_upgrade(master, "rolled_back", f"generation {gen} rolled back: {why}")


def _announce_reload(gen: int, cfg: Any, log: Any) -> None:
    log.info(
        "grace_plugins: reload: starting generation %s (%s workers); the running workers keep"
        " serving until it is ready",
        gen,
        cfg.workers,
    )
    if cfg.preload_app:
        log.warning(
            "grace_plugins: --preload is on: the app was imported once in the master, so HUP"
            " restarts the workers on the SAME code. To load new code send USR2 (a new master),"
            " or run without --preload."
        )


class _TrackedConn(gthread.TConn):
    """gthread's connection, counted in the tracker from accept to close."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any, tracker: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.tracker = tracker
        tracker.accepted(self, sock)

    def close(self, graceful: bool = False) -> None:
        try:
            if _GRACEFUL_CLOSE:
                super().close(graceful)
            else:
                super().close()
        finally:
            self.tracker.closed(self)


class Worker(gthread.ThreadWorker):
    """A gthread worker with connection tracking, drains and a readiness-gated reload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # runs in the master, before the fork
        self.generation, self.gate = MASTER.generation_for(self.cfg, self.log, self._age)
        self.tracker = ConnectionTracker(keepalive_timeout=float(self.cfg.keepalive))
        self.member = Member(self.generation, self._age, 0)
        self._term_pending = False
        self._last_term = 0.0
        self._watch_own = True
        self._next_check = 0.0
        self._settled = threading.Event()
        self._boot_start = 0.0
        self._stop_reason = ""

    @property
    def age(self) -> int:
        """gunicorn's spawn counter; in the master, older workers that outlived a rolled-back
        generation count as younger than it; and the master looks for the verdict that ends
        a start or reload for systemd (see :mod:`grace_plugins.gunicorn.notify`).

        ``Arbiter.reload()`` waits (up to ``graceful_timeout``, handling no other signal) until
        no worker is older than the reload, and ``manage_workers()`` SIGTERMs the oldest
        surplus workers: after a rollback the old workers are the ones to keep, so the master
        stops waiting for them at once and never picks them as surplus.
        """
        if os.getpid() != self.ppid:
            return self._age
        if getattr(self, "gate", None) is not None:
            MASTER.poll(self.gate)
        if self._outlived_rollback():
            return self._age + ROLLED_BACK_AGE_BONUS
        return self._age

    @age.setter
    def age(self, value: int) -> None:
        self._age = value

    def _outlived_rollback(self) -> bool:
        gate = getattr(self, "gate", None)
        if gate is None:
            return False
        newest = gate.newest_generation()
        if newest <= self.generation:
            return False
        return gate.resolution(newest) not in (None, PROMOTED)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.reuse_port:
            raise RuntimeError(
                "grace_plugins.Worker does not support --reuse-port: every worker would own a"
                " listening socket, and the connections queued on a draining worker's socket"
                " would be reset. Drop --reuse-port (the workers share one listener)."
            )

    # -- boot -------------------------------------------------------------------------------------
    def init_process(self) -> None:
        self.member = Member(self.generation, self._age, os.getpid())
        self._boot_start = time.monotonic()
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

    def _watch_boot(self) -> None:
        """Bound the app import: a worker not ready in time fails (a hang must not block)."""
        limit = ready_timeout(self.cfg)
        deadline = self._boot_start + limit
        main = threading.main_thread().ident
        while not self._settled.wait(1.0):
            if time.monotonic() < deadline:
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
            os._exit(self._fail(reason))

    def _load_failed(self, exc: Exception) -> None:
        self._settled.set()
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()
        if self.gate.claim("logged", self.generation):
            self.log.error(
                "grace_plugins: generation %s: the new code does not load (%s); the running"
                " workers keep serving the previous code. Fix it and send HUP again.",
                self.generation,
                reason,
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
        sys.exit(status)

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

    # -- signals ----------------------------------------------------------------------------------
    def init_signals(self) -> None:
        super().init_signals()
        # HUP is the master's (reload). A hang-up sent to the whole process group (a closed
        # terminal, ``kill -HUP -PGID``) must not kill the workers with their requests in
        # flight. A handler, not SIG_IGN: an ignored signal would stay ignored in programs the
        # app runs.
        signal.signal(signal.SIGHUP, _ignore_signal)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: only record it; the loop decides (drain now, or after the new generation)."""
        self._term_pending = True
        self._last_term = time.time()  # wall clock, compared with the verdict file's mtime
        if self.member.pid and self.gate.newest_generation() <= self.generation:
            self.gate.record(self.member, "stopping")  # a plain stop: tells gated older workers
        self.method_queue.defer(_noop)

    # -- serving ----------------------------------------------------------------------------------
    def run(self) -> None:
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        self.set_accept_enabled(True)
        self._became_ready()
        while self.alive:
            self.notify()
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            watching = self._term_pending or self._watch_own
            self.wait_for_and_dispatch_events(timeout=POLL if watching else 1.0)
            if not self.is_parent_alive():
                self._stop_reason = "the master is gone"
                break
            self._murder_idle()
            self._tick()
        self._drain()

    def _became_ready(self) -> None:
        self._settled.set()
        self.gate.record(self.member, "ready")
        self.log.info(
            "grace_plugins: worker %s (generation %s) ready after %d ms",
            self.member.pid,
            self.generation,
            (time.monotonic() - self._boot_start) * 1000,
        )
        self._check_own()

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + POLL
        if self._watch_own:
            self._check_own()
        if self._term_pending and self.alive:
            self._decide_term()

    def _check_own(self) -> None:
        """Watch this worker's own generation until it has a verdict (and log it, once)."""
        status, why, decided = self.gate.status(self.generation)
        if decided:
            self._log_verdict(self.generation, status, why)
            if status == PROMOTED and self.generation == 1:
                self._retire_previous_master()
        if status == PENDING:
            return
        self._watch_own = False
        if status == ROLLED_BACK and self._is_member() and self.alive:
            # All or nothing: a generation some of whose workers failed is not trusted.
            self._begin_stop(f"generation {self.generation} was rolled back")

    def _retire_previous_master(self) -> None:
        """USR2 made whole: this master was started by ``kill -USR2`` (gunicorn passes the old
        master's pid in ``GUNICORN_PID``) and its first workers are all ready, so the old master
        is stopped gracefully (SIGTERM: its workers drain). Gunicorn then promotes this master
        and renames its pidfile. If these workers never get ready, the old master stays."""
        old = os.environ.get("GUNICORN_PID", "")
        if not old.isdigit() or int(old) in (self.ppid, os.getpid()) or not pid_alive(int(old)):
            return
        self.log.info(
            "grace_plugins: USR2: the new master %s is ready; stopping the old master %s"
            " gracefully",
            self.ppid,
            old,
        )
        try:
            os.kill(int(old), signal.SIGTERM)
        except OSError as exc:
            self.log.warning("grace_plugins: could not stop the old master %s: %s", old, exc)

    def _decide_term(self) -> None:
        """A SIGTERM is pending: drain now, keep waiting, or (after a rollback) forget it."""
        newest = self.gate.newest_generation()
        if newest <= self.generation:
            self._begin_stop("SIGTERM")
            return
        status, why, decided = self.gate.status(newest)
        if decided:
            self._log_verdict(newest, status, why)
        if status == STOPPING:
            self._begin_stop("SIGTERM (the master is stopping)")
        elif status == PROMOTED:
            self._begin_stop(f"generation {newest} is ready")
        elif status == ROLLED_BACK:
            # The reload's SIGTERM reached us before the verdict (after it the master counts
            # us as younger than the failed workers, see ``age``): one that came later is a stop.
            decided_at = self.gate.resolution_time(newest) or 0.0
            if self._last_term > decided_at + TERM_SLACK:
                self._begin_stop("SIGTERM")
                return
            self._term_pending = False
            self.log.info(
                "grace_plugins: worker %s (generation %s) keeps serving: generation %s was"
                " rolled back",
                self.member.pid,
                self.generation,
                newest,
            )

    def _begin_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.alive = False

    def _log_verdict(self, gen: int, status: str, why: str) -> None:
        """Log the verdict on *gen* and record it for ``grace-plugins reload``; called once,
        by the worker that decided it. Under systemd the master records it instead, after
        ``READY=1`` (see :meth:`_Master.poll`)."""
        if not MASTER.systemd.active:
            record_verdict(self.ppid, self.gate, gen, status, why)
        if status == PROMOTED:
            members = self.gate.members(gen)
            self.log.info(
                "grace_plugins: generation %s ready: %s workers serving (pids %s)%s",
                gen,
                len(members),
                pid_list(members),
                "; the previous workers drain" if gen > 1 else "",
            )
        elif status == ROLLED_BACK and gen > 1:
            self.log.error(
                "grace_plugins: generation %s rolled back (%s); the previous workers keep serving",
                gen,
                why,
            )
        elif status == ROLLED_BACK:
            self.log.warning("grace_plugins: generation %s started incomplete (%s)", gen, why)

    # -- connections ------------------------------------------------------------------------------
    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = _TrackedConn(
            self.cfg, client_sock, client_addr, listener.getsockname(), self.tracker
        )
        self.enqueue_req(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        self.tracker.request_started(conn)
        try:
            return super().handle_request(req, conn)
        finally:
            self.tracker.request_finished(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """gthread's, without the 2 s stop linger: a kept-alive connection stays for its
        whole ``keepalive`` (a request on it during a drain gets ``Connection: close``)."""
        try:
            result = fs.result() if not fs.cancelled() else False
            if result is _DEFER:
                conn.sock.setblocking(False)
                conn.timeout = time.monotonic() + self.cfg.keepalive
                self.pending_conns.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
                )
            elif result:
                buffered = getattr(getattr(conn.parser, "unreader", None), "buf", None)
                if buffered is not None and buffered.getvalue():
                    self.enqueue_req(conn)  # the next request was read ahead already
                    return
                conn.sock.setblocking(False)
                conn.set_timeout()
                self.keepalived_conns.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
                )
            else:
                self.nr_conns -= 1
                conn.close(graceful=True)
        except Exception:
            self.nr_conns -= 1
            conn.close()

    # -- drain ------------------------------------------------------------------------------------
    def _murder_idle(self) -> None:
        self.murder_keepalived()
        if hasattr(self, "murder_pending"):  # gunicorn >= 25.3
            self.murder_pending()

    def _drain(self) -> None:
        """Stop accepting (close our listener copies, never shutdown()), finish, exit."""
        self.alive = False
        self._settled.set()
        reason = self._stop_reason or (
            "max_requests reached" if self.nr >= self.max_requests else "stop"
        )
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        self.tracker.begin_drain()
        reports: list[Any] = []
        drainer = threading.Thread(
            target=lambda: reports.append(self.tracker.drain(float(self.cfg.graceful_timeout))),
            name="grace-drain",
            daemon=True,
        )
        drainer.start()
        while drainer.is_alive():
            self.notify()
            self.wait_for_and_dispatch_events(timeout=POLL)
            self._murder_idle()
        drainer.join()
        left = sum(self.tracker.counts())
        while self.keepalived_conns:  # only after the deadline: everything else is closed
            conn = self.keepalived_conns.popleft()
            with contextlib.suppress(Exception):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        report = reports[0]
        self.log.info(
            "grace_plugins: worker %s (generation %s) drained %s connections in %d ms (%s;"
            " %s requests served, %s idle closed, %s cut at graceful_timeout)",
            self.member.pid,
            self.generation,
            report.connections,
            report.elapsed_ms,
            reason,
            self.nr,
            report.idle_closed,
            report.closed_at_deadline + left,
        )
        if report.closed_at_deadline or left:
            # Request threads still inside the app would hold the exit: do not wait for them.
            threading.Thread(target=_exit_soon, daemon=True).start()


def _exit_soon() -> None:
    time.sleep(1.0)
    os._exit(0)
