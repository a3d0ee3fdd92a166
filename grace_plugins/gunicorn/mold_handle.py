"""A mold as the master knows it: its pid, its private socket, and the master's side of the
talk on it (the first answer, a fork request) and of its end (reaping it before gunicorn can).
See :mod:`grace_plugins.gunicorn.molds`."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from grace_plugins.gunicorn.records import RecordStore
from grace_plugins.wire import Wire

#: Longest a fork request may take.
FORK_TIMEOUT = 10.0
#: How often the master, waiting for a mold, looks whether it is asked to stop.
STEP = 0.1


@dataclass
class MoldHandle:
    """A mold that answered ready."""

    gen: int
    pid: int
    wire: Wire
    since: float  # time.time() when it became ready
    workers: list[int] = field(default_factory=list)
    #: its copy, forked from it idle, which takes its place if it dies (:meth:`make_spare`)
    spare: MoldHandle | None = None

    def gone(self) -> bool:
        """Whether it exited: its end of the socket closed. An answer the master has not read
        yet (a signal handler can ask in the middle of a fork request) is not an end."""
        sock = self.wire.sock
        try:
            poller = select.poll()  # not select(): any fd number
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def fork(self, age: int, tmp_fd: int) -> int | None:
        """Ask the mold to fork the worker of gunicorn's *age* (with its heartbeat file); the
        worker's pid, or None."""
        try:
            self.wire.send({"fork": age}, [tmp_fd])
            got = self.wire.receive(FORK_TIMEOUT)
        except (OSError, TimeoutError, ValueError):
            return None
        if got is None or not isinstance(got[0].get("pid"), int):
            return None
        return int(got[0]["pid"])

    def make_spare(self) -> MoldHandle | None:
        """Ask the mold to fork its spare, which talks to the master on a socket of its own;
        the spare's handle, or None. A mold that did not answer in time is closed (it is
        :meth:`gone` from then on): its answer may still come, and would be read as the
        answer to the next request."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.wire.send({"spare": 1}, [theirs.fileno()])
            got = self.wire.receive(FORK_TIMEOUT)
        except (OSError, TimeoutError, ValueError):
            got = None
            self.wire.sock.close()
        finally:
            theirs.close()
        if got is None or not isinstance(got[0].get("pid"), int):
            ours.close()
            return None
        return MoldHandle(self.gen, int(got[0]["pid"]), Wire(ours), self.since)

    def pids(self) -> list[int]:
        """Its pid, and its spare's."""
        return [self.pid] + ([self.spare.pid] if self.spare is not None else [])

    def as_state(self) -> dict[str, Any]:
        """What ``grace-plugins status`` shows of it."""
        return {
            "pid": self.pid,
            "spare": self.spare.pid if self.spare is not None else None,
            "generation": self.gen,
            "since": self.since,
            "workers": self.workers,
        }


def first_answer(
    wire: Wire, store: RecordStore, deadline: float, timeout: float
) -> tuple[dict[str, Any], str]:
    """A new mold's answer, or ``({}, why there is none)``: bounded by *deadline*, and cut
    short when the master stops. *timeout*: the ready timeout, for the reason."""
    while time.monotonic() < deadline:
        if store.master_stopping():
            return {}, "stopping"
        try:
            got = wire.receive(STEP)
        except TimeoutError:
            continue
        except (OSError, ValueError):
            got = None
        if got is None:  # a stop signal to the whole group can end the mold first
            return {}, "stopping" if store.master_stopping() else "it exited before it was ready"
        return got[0], ""
    return {}, f"it was not ready within {timeout:g} s"


def reap(pid: int, kill: bool) -> str:
    """Reap a mold that leaves (*kill*: it did not answer, kill it first): its status, as the
    log says it. The master reaps it here, before gunicorn's ``waitpid(-1)`` could: gunicorn
    24 halts on any child's 3 or 4, whoever the child is."""
    deadline = time.monotonic() + (0.0 if kill else 2.0)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                done, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return "reaped elsewhere"
        if done:
            code = os.waitstatus_to_exitcode(status)
            return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        time.sleep(0.005)
