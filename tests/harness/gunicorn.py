"""A gunicorn master under test (``gunicorn -k grace_plugins.Worker`` or one of gunicorn's own
workers) on 127.0.0.1, serving ``tests/apps/gunicorn_app.py`` with the code under upgrade in
``appcode.py``; and the ways that code can be broken.

Import it directly (``from tests.harness.gunicorn import ...``): it is gunicorn's only.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from tests.harness import procfs
from tests.harness.client import Response, http_get, read_response
from tests.harness.code import broken_at_import, write_module
from tests.harness.server import ROOT, ServerProcess, grace_cli, joined, wait_until

APPS = os.path.join(ROOT, "tests", "apps")
#: What each worker logs as it starts (molds never do).
BOOTING = r"Booting worker with pid: (\d+)"
#: Our worker's line for a promoted generation (its number, or any: ``\d+``), with the pids.
PROMOTED = r"generation {gen} ready: \d+ workers serving \(pids ([\d,]+)\)"
LISTENING = r"Listening at: https?://127\.0\.0\.1:(\d+) \((\d+)\)"
#: The new workers' ready timeout (gunicorn's ``--timeout``) in the tests of broken code.
BROKEN_TIMEOUT = 4


def broken_code() -> dict[str, str]:
    """Every way new code can fail at import (the harness's table), plus gunicorn's own: its
    master halts on a worker's exit status 4 as on 3, whatever produced it."""
    table = {kind: code for kind, (code, _) in broken_at_import(BROKEN_TIMEOUT).items()}
    table["sys.exit(4)"] = "import sys\nsys.exit(4)\n"
    table["os._exit(4)"] = "import os\nos._exit(4)\n"
    return table


BROKEN = broken_code()
#: Broken code that leaves no traceback (a hang is cut by the watchdog, abort is a signal).
NO_TRACEBACK = {"hang", "os.abort()"}


class Gunicorn(ServerProcess):
    """A gunicorn master under test: the port comes from its "Listening at" line."""

    def wait_ready(self, timeout: float = 30.0) -> int:
        self.port = int(self.wait_for(LISTENING, timeout).group(1))
        if "grace_plugins.Worker" in self.argv:
            self.wait_for(r"grace_plugins: generation 1 ready", timeout)
        else:
            port = self.port
            wait_until(lambda: answers(port), timeout, "gunicorn to answer")
        return self.port

    def hup(self, gen: int, timeout: float = 30.0) -> list[int]:
        """HUP; wait for generation *gen* to be promoted and the previous workers to exit;
        return the new workers' pids."""
        start = self.mark()
        os.kill(self.pid, signal.SIGHUP)
        pids = self.wait_promoted(gen, start, timeout)
        self.wait_until_workers(len(pids), timeout)
        return pids

    def wait_promoted(self, gen: int, after: int, timeout: float = 30.0) -> list[int]:
        """Wait for generation *gen*'s promotion (logged at *after* or later); its pids."""
        found = self.wait_for(PROMOTED.format(gen=gen), timeout, after=after)
        return [int(p) for p in found.group(1).split(",")]

    def wait_rollback(self, gen: int, after: int, timeout: float = 20) -> None:
        """Wait until generation *gen* is rolled back and every worker its reload forked is
        gone: gunicorn forks them one after another, so some may start after the verdict (a
        mold that failed forked none)."""
        found = self.wait_for(rf"generation {gen} rolled back \((.*)\)", timeout, after=after)
        size = re.search(rf"starting generation {gen} \((\d+) workers\)", self.output(after))
        forks = int(size.group(1)) if size and "the mold" not in found.group(1) else 0

        def all_gone() -> bool:
            booted = {int(p) for p in re.findall(BOOTING, self.output(after))}
            return len(booted) >= forks and not booted & set(self.workers())

        wait_until(all_gone, timeout, f"the {forks} workers of generation {gen} to exit")

    def broken_hup_then_fix(self, app_dir: str | os.PathLike[str], code: str, gen: int) -> int:
        """HUP with broken *code* (generation *gen*): it is rolled back, the same workers serve
        the same code on and the master does not halt; then HUP with ``v{gen + 1}``: answered
        by the new workers. Returns the output position from before the broken HUP."""
        old, serving = set(self.workers()), http_get(self.port or 0).version
        write_code(app_dir, code)
        mark = self.mark()
        os.kill(self.pid, signal.SIGHUP)
        self.wait_rollback(gen, mark)
        self.wait_until_workers(len(old), 20)
        assert self.proc.poll() is None, "the master halted"
        assert set(self.workers()) == old
        assert http_get(self.port or 0).version == serving
        write_code(app_dir, version(f"v{gen + 1}"))
        new = self.hup(gen + 1)
        resp = http_get(self.port or 0)
        assert (resp.version, resp.pid in new) == (f"v{gen + 1}", True)
        return mark

    def wait_watching(self, loaded: int, after: int = 0, timeout: float = 30.0) -> None:
        """With ``--reload``: wait until the master's watcher watches what generation *loaded*
        loaded (the workers report it once ready)."""
        self.wait_for(
            rf"watching \d+ files and \d+ globs: what generation {loaded} loaded", timeout, after
        )

    def workers(self) -> list[int]:
        """The master's live worker processes: its children that logged gunicorn's "Booting
        worker" line. With ``--preload`` its other children, the molds and their spares, never
        do (a spare is the master's child a moment before the master names it)."""
        booted = {int(pid) for pid in re.findall(BOOTING, self.output())}
        return [pid for pid in procfs.live_children(self.pid) if pid in booted]

    def wait_until_workers(self, count: int, timeout: float = 30.0) -> None:
        wait_until(lambda: len(self.workers()) == count, timeout, f"{count} workers")

    def worker_sockets(self) -> int:
        """Sockets held by the master's workers (listeners and connections)."""
        return sum(procfs.socket_count(pid) for pid in self.workers())


def serving_pids(server: Gunicorn) -> set[int]:
    """The workers ``grace-plugins status`` names on its ``serving:`` line."""
    shown = grace_cli("status", "--pid", str(server.pid)).stdout
    listed = re.search(r"^serving: generation \d+ \(pid ([\d,]+)\)", shown, re.M)
    return {int(pid) for pid in listed.group(1).split(",")} if listed else set()


class InFlight:
    """One GET sent at construction from the caller's thread (so it is on the wire before the
    caller goes on) and read on a thread of its own; :meth:`join` it."""

    def __init__(
        self,
        port: int,
        path: str,
        timeout: float = 40.0,
        conn: http.client.HTTPConnection | None = None,
    ) -> None:
        self.conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path)
        assert self.conn.sock is not None
        self.client_port: int = self.conn.sock.getsockname()[1]
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.finished: float | None = None  # time.monotonic() when the answer (or error) came
        self.thread = threading.Thread(target=self._read, name="in-flight request")
        self.thread.start()

    def _read(self) -> None:
        try:
            self.response = read_response(self.conn)[0]
        except Exception as exc:  # the test asserts on it
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.conn.close()

    def held_by(self, server: Gunicorn) -> int | None:
        """The worker that holds this connection (accepted it), if any yet."""
        return procfs.holder_of(server.workers(), self.client_port)

    def wait_held(self, server: Gunicorn, timeout: float = 10.0) -> int:
        """Wait until a worker accepted the connection (it holds it, or already answered);
        return its pid."""

        def holder() -> int | None:
            if self.finished is not None and self.response is not None:
                return self.response.pid
            return self.held_by(server)

        return wait_until(holder, timeout, "a worker to accept")  # type: ignore[return-value]

    @classmethod
    def on_another_worker(
        cls, server: Gunicorn, path: str, taken: set[int], attempts: int = 60
    ) -> InFlight:
        """Send *path* on a connection held by a worker not in *taken*. Connections are opened
        (and closed again) until one lands there: the kernel, not the client, picks the worker
        (``grace_plugins.Worker`` leaves it to a worker with a free thread, but with several
        free threads in each, either may take it)."""
        for _ in range(attempts):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=40.0)
            conn.connect()
            assert conn.sock is not None
            port = conn.sock.getsockname()[1]
            holder = wait_until(
                lambda: procfs.holder_of(server.workers(), port),  # noqa: B023
                10,
                "a worker to accept",
            )
            if holder not in taken:
                return cls(server.port, path, conn=conn)
            conn.close()
        raise AssertionError(f"{attempts} connections all went to {taken} of {server.workers()}")

    def join(self, timeout: float = 40.0) -> Response:
        """Wait for the answer; fail if there is none."""
        joined(self.thread, timeout, "an in-flight request")
        assert self.response is not None, f"no answer: {self.error!r}"
        return self.response


def answers(port: int) -> bool:
    try:
        return http_get(port, timeout=2).status == 200
    except OSError:
        return False


def control_socket(directory: str | os.PathLike[str]) -> list[str]:
    """gunicorn >= 25.3 opens a control socket in ~/.gunicorn by default: one per master."""
    import gunicorn.config

    if not any(s.name == "control_socket" for s in gunicorn.config.KNOWN_SETTINGS):
        return []
    return ["--control-socket", os.path.join(directory, "ctl.sock")]


def write_code(directory: str | os.PathLike[str], text: str) -> None:
    """Replace ``appcode.py`` atomically (workers import it while we write)."""
    write_module(os.path.join(directory, "appcode.py"), text)


def version(v: str) -> str:
    return f"VERSION = {v!r}\n"


def gunicorn_argv(
    app_dir: str | os.PathLike[str],
    *extra: str,
    worker: str = "grace_plugins.Worker",
    workers: int = 2,
    threads: int | None = 4,
    keepalive: int | None = 5,
    graceful: int = 15,
    timeout: int = 10,
    apps: str = APPS,
    app: str = "gunicorn_app:app",
) -> list[str]:
    """The command line of a master serving *app* (by default ``gunicorn_app:app``) from
    *app_dir*; ``None`` leaves a setting at gunicorn's default."""
    argv = [
        sys.executable, "-m", "gunicorn",
        "-k", worker,
        "--chdir", str(app_dir),
        "--pythonpath", apps,
        "--workers", str(workers),
        "--graceful-timeout", str(graceful),
        "--timeout", str(timeout),
        "--bind", "127.0.0.1:0",
        *control_socket(app_dir),
    ]  # fmt: skip
    if threads is not None:
        argv += ["--threads", str(threads)]
    if keepalive is not None:
        argv += ["--keep-alive", str(keepalive)]
    return [*argv, *extra, app]


def start_gunicorn(
    start_server,
    tmp_path: Path,
    *extra: str,
    code: str | None = None,
    ready: bool = True,
    env: dict[str, str] | None = None,
    **settings,
) -> Gunicorn:
    """Start a master (see :func:`gunicorn_argv` for *settings*) through the tests'
    ``start_server`` fixture, with ``appcode.py`` at *code* (v1); wait for it unless
    *ready* is False."""
    write_code(tmp_path, code if code is not None else version("v1"))
    argv = gunicorn_argv(tmp_path, *extra, **settings)
    env = {"PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    server = start_server(argv, cwd=str(tmp_path), env=env, cls=Gunicorn)
    if ready:
        server.wait_ready()
    return server


def assert_clean(report, *, slow: bool = True) -> None:
    """The load saw requests and no failure (and every slow request completed)."""
    assert report.requests > 0, report.summary()
    assert not report.failures, report.summary()
    if slow:
        assert report.slow_started - report.slow_completed <= 0, report.summary()
