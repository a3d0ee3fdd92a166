"""End-to-end tests of ``gunicorn -k grace_plugins.Worker``: real gunicorn masters on 127.0.0.1,
client threads, HUPs, broken code (the gate's rules: tests/unit/test_gunicorn_gate.py)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.harness import (
    ROOT,
    Load,
    ServerProcess,
    fd_count,
    grace_cli,
    http_get,
    wait_until,
    zombies,
)

pytest.importorskip("gunicorn")

APPS = os.path.join(ROOT, "tests", "apps")
LISTENING = r"Listening at: https?://127\.0\.0\.1:(\d+) \((\d+)\)"

BROKEN = {
    "syntax": "VERSION = (\n",
    "import": "import grace_plugins_no_such_module\nVERSION = 'never'\n",
    "exception": "raise RuntimeError('boom at import')\n",
    "hang": "import time\ntime.sleep(3600)\nVERSION = 'never'\n",
    # gunicorn halts its master on a worker exit status of 3 or 4, whatever produced it
    "sys.exit(3)": "import sys\nsys.exit(3)\n",
    "sys.exit(4)": "import sys\nsys.exit(4)\n",
    "os._exit(3)": "import os\nos._exit(3)\n",
    "os._exit(4)": "import os\nos._exit(4)\n",
    "sys.exit(message)": "import sys\nsys.exit('no settings: giving up')\n",
    "os.abort()": "import os\nos.abort()\n",
}
#: Broken code that leaves no traceback (a hang is cut by the watchdog, abort is a signal).
NO_TRACEBACK = {"hang", "os.abort()"}


class Gunicorn(ServerProcess):
    """A gunicorn master under test: the port and pid come from its "Listening at" line."""

    def wait_ready(self, timeout: float = 30.0) -> int:
        self.port = int(self.wait_for(LISTENING, timeout).group(1))
        if "grace_plugins.Worker" in self.argv:
            self.wait_for(r"grace_plugins: generation 1 ready", timeout)
        else:
            wait_until(lambda: _answers(self.port), timeout, "gunicorn to answer")
        return self.port

    def hup(self, gen: int, timeout: float = 30.0) -> list[int]:
        """HUP; wait for generation *gen* to be promoted and the previous workers to exit."""
        start = self.mark()
        os.kill(self.pid, signal.SIGHUP)
        found = self.wait_for(
            rf"generation {gen} ready: \d+ workers serving \(pids ([\d,]+)\)", timeout, after=start
        )
        self.wait_until_workers(len(found.group(1).split(",")), timeout)
        return [int(p) for p in found.group(1).split(",")]

    def wait_rollback(self, gen: int, after: int, timeout: float = 20) -> None:
        """Wait until generation *gen* is rolled back and the workers it booted are gone."""
        self.wait_for(rf"generation {gen} rolled back", timeout, after=after)
        booted = {int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.output(after))}
        wait_until(lambda: not booted & set(self.workers()), timeout, "the new workers to exit")

    def output(self, after: int = 0) -> str:
        with self._cond:
            return "\n".join(self._lines[after:])

    def workers(self) -> list[int]:
        return _children(self.pid)

    def wait_until_workers(self, count: int, timeout: float = 30.0) -> None:
        wait_until(lambda: len(self.workers()) == count, timeout, f"{count} workers")

    def extra_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.output())]


def _worker_sockets(server: ServerProcess) -> int | None:
    """Sockets held by the master's workers (Linux), or None where /proc is missing."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    total = 0
    for pid in _children(server.pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    total += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return total


def _children(pid: int) -> list[int]:
    """Live (non-zombie) children of *pid*."""
    from tests.harness import child_pids

    alive = []
    for child in child_pids(pid) or []:
        try:
            with open(f"/proc/{child}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(child)
        except OSError:
            pass
    return alive


def _answers(port: int) -> bool:
    try:
        return http_get(port, timeout=2).status == 200
    except OSError:
        return False


def control_socket(tmp_path) -> list[str]:
    """gunicorn >= 25.3 opens a control socket in ~/.gunicorn by default: one per master."""
    import gunicorn.config

    if not any(s.name == "control_socket" for s in gunicorn.config.KNOWN_SETTINGS):
        return []
    return ["--control-socket", str(tmp_path / "ctl.sock")]


def write_code(directory, text: str) -> None:
    """Replace ``appcode.py`` atomically (workers import it while we write)."""
    tmp = os.path.join(directory, "appcode.py.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, os.path.join(directory, "appcode.py"))


def version(v: str) -> str:
    return f"VERSION = {v!r}\n"


def start_gunicorn(
    start_server,
    tmp_path,
    *extra: str,
    worker: str = "grace_plugins.Worker",
    workers: int = 2,
    threads: int = 4,
    keepalive: int = 5,
    graceful: int = 15,
    timeout: int = 10,
    code: str | None = None,
    ready: bool = True,
    env: dict[str, str] | None = None,
) -> Gunicorn:
    write_code(tmp_path, code if code is not None else version("v1"))
    argv = [
        sys.executable, "-m", "gunicorn",
        "-k", worker,
        "--chdir", str(tmp_path),
        "--pythonpath", APPS,
        "--workers", str(workers),
        "--threads", str(threads),
        "--keep-alive", str(keepalive),
        "--graceful-timeout", str(graceful),
        "--timeout", str(timeout),
        "--bind", "127.0.0.1:0",
        *control_socket(tmp_path),
        *extra,
        "gunicorn_app:app",
    ]  # fmt: skip
    env = {"PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    server = start_server(argv, cwd=str(tmp_path), env=env, cls=Gunicorn)
    if ready:
        server.wait_ready()
    return server


def assert_clean(report, *, slow: bool = True) -> None:
    assert report.requests > 0, report.summary()
    assert not report.failures, report.summary()
    if slow:
        assert report.slow_started - report.slow_completed <= 0, report.summary()


def test_import_does_not_load_gunicorn():
    code = (
        "import os, sys, grace_plugins; assert 'gunicorn' not in sys.modules;"
        " w = grace_plugins.Worker; assert 'gunicorn' in sys.modules; print(w.__name__);"
        # only a gunicorn master takes NOTIFY_SOCKET (see grace_plugins.gunicorn.notify)
        " assert os.environ['NOTIFY_SOCKET'] == '@not-a-master'"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "NOTIFY_SOCKET": "@not-a-master"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Worker"


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_ten_hups_under_load(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, keepalive=2)
    master = server.pid
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, version("v2"))
        server.hup(2)
        wait_until(lambda: not zombies(master), 10, "no zombies")
        fds = fd_count(master)
        for gen in range(3, 13):
            write_code(tmp_path, version(f"v{gen}"))
            new_pids = server.hup(gen)
            resp = http_get(server.port)
            assert resp.version == f"v{gen}" and resp.pid in new_pids, resp
            assert server.pid == master and server.proc.poll() is None
        report = load.stop()
    assert_clean(report)
    assert report.slow_completed >= 5, report.summary()
    assert {f"v{gen}" for gen in range(3, 13)} <= report.versions, report.versions
    wait_until(lambda: not zombies(master), 10, "no zombies")
    if fds is not None:
        assert fd_count(master) == fds
    assert len(re.findall(r"drained \d+ connections", server.output())) >= 20
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_code_hup_keeps_serving(start_server, tmp_path, kind):
    server = start_gunicorn(start_server, tmp_path, timeout=4)
    old = set(server.workers())
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, BROKEN[kind])
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(2, mark)
        server.wait_until_workers(2, 20)
        assert server.proc.poll() is None, "the master halted"
        assert set(server.workers()) == old
        assert http_get(server.port).version == "v1"
        write_code(tmp_path, version("v3"))
        new = server.hup(3)
        resp = http_get(server.port)
        assert (resp.version, resp.pid in new) == ("v3", True)
        report = load.stop()
    assert_clean(report)
    if kind not in NO_TRACEBACK:
        assert len(re.findall(r"Traceback \(most recent call last\)", server.output())) == 1
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_broken_code_with_a_worker_killed(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, timeout=4)
    write_code(tmp_path, BROKEN["import"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_rollback(2, mark)
    server.wait_until_workers(2, 20)
    victim, survivor = server.workers()
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        # back-off: each respawn that meets the broken code waits longer before it exits (1 s,
        # then 2 s), so the master does not fork in a hot loop
        backoff = r"does not load \({n} failed respawns in a row\); this worker exits in {s} s"
        server.wait_for(backoff.format(n=1, s=1), 20, after=mark)
        first = time.monotonic()
        server.wait_for(backoff.format(n=2, s=2), 20, after=mark)
        assert time.monotonic() - first >= 0.9, "the second respawn did not wait for the first"
        assert server.proc.poll() is None
        assert http_get(server.port).pid == survivor
        write_code(tmp_path, version("v3"))
        new = server.hup(3)
        report = load.stop()
    assert_clean(report)
    assert http_get(server.port).version == "v3"
    assert survivor not in server.workers() and set(server.workers()) == set(new)
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_partial_failure_rolls_back_the_whole_generation(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path)
    old = set(server.workers())
    # the first worker to import this code loads it, the second fails
    write_code(
        tmp_path,
        "import os\n"
        "try:\n"
        "    os.close(os.open('slot', os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "except FileExistsError:\n"
        "    raise RuntimeError('second worker of this generation') from None\n"
        "VERSION = 'v2'\n",
    )
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"generation 2 rolled back", 20, after=mark)
        server.wait_for(r"\(generation 2\) drained", 20, after=mark)
        server.wait_until_workers(2, 20)
        assert set(server.workers()) == old
        write_code(tmp_path, version("v3"))
        server.hup(3)
        report = load.stop()
    assert_clean(report)
    assert http_get(server.port).version == "v3"


@pytest.mark.timeout(90)
def test_keepalive_clients_idle_3s_across_4_hups(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, keepalive=5)
    with Load(server.port, fresh=0, keepalive=4, slow=0, keepalive_pause=3.0) as load:
        for gen in range(2, 6):
            # every client sends its next request on a connection idle for 3 s, some of them
            # to a worker that is draining
            rounds = 4 * (gen - 1)
            wait_until(lambda: load.report.requests >= rounds, 15, "a round of requests")  # noqa: B023
            write_code(tmp_path, version(f"v{gen}"))
            server.hup(gen)
        done = load.report.requests
        wait_until(lambda: load.report.requests >= done + 4, 15, "a round on the new workers")
        report = load.stop()
    assert_clean(report, slow=False)
    assert "v5" in report.versions


@pytest.mark.timeout(60)
def test_sigterm_under_load_finishes_in_flight(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path)
    results: list[object] = []
    sockets_before = _worker_sockets(server)
    # the requests are sent from this thread, so they are surely on the wire before the stop
    slow = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=20) for _ in range(3)]
    for conn in slow:
        conn.request("GET", "/hello?sleep=1.5")

    def read(conn: http.client.HTTPConnection) -> None:
        try:
            resp = conn.getresponse()
            resp.read()
            results.append(resp.status)
        except Exception as exc:  # recorded, asserted below
            results.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=read, args=(conn,)) for conn in slow]
    for thread in threads:
        thread.start()
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/hello")
    idle.getresponse().read()
    if sockets_before is not None:  # the workers hold the 3 slow connections and the idle one
        wait_until(lambda: (_worker_sockets(server) or 0) >= sockets_before + 4, 10, "the accepts")
    assert server.stop(30) == 0
    for thread in threads:
        thread.join(10)
    idle.close()
    assert results == [200, 200, 200]
    assert re.search(r"drained \d+ connections .*SIGTERM", server.output())


@pytest.mark.timeout(60)
def test_user_hooks_run_with_ours(start_server, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(
        "def on_reload(server):\n    print('USER on_reload', flush=True)\n"
        "def post_worker_init(worker):\n    print('USER post_worker_init', flush=True)\n"
        "def worker_exit(server, worker):\n    print('USER worker_exit', flush=True)\n"
        "def child_exit(server, worker):\n    print('USER child_exit', flush=True)\n"
    )
    server = start_gunicorn(start_server, tmp_path, "-c", str(tmp_path / "gunicorn.conf.py"))
    write_code(tmp_path, version("v2"))
    server.hup(2)
    assert http_get(server.port).version == "v2"
    out = server.output()
    assert out.count("USER post_worker_init") == 4
    assert out.count("USER on_reload") == 1
    wait_until(lambda: server.output().count("USER child_exit") == 2, 10, "child_exit x2")
    assert server.output().count("USER worker_exit") >= 2


@pytest.mark.timeout(60)
def test_gthread_halts_on_broken_hup_where_ours_survives(start_server, tmp_path):
    """The difference, shown on gunicorn's own gthread worker: the same broken HUP that our
    worker rolls back (test above) takes gthread's master down."""
    server = start_gunicorn(start_server, tmp_path, worker="gthread")
    write_code(tmp_path, BROKEN["syntax"])
    os.kill(server.pid, signal.SIGHUP)
    status = server.proc.wait(30)
    assert status != 0
    server.wait_for(r"HaltServer|Reason: (App failed to load|Worker failed to boot)", 10)
    assert not _answers(server.port)


@pytest.mark.timeout(60)
def test_start_with_broken_code_exits_like_gunicorn(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, code=BROKEN["syntax"], ready=False)
    assert server.proc.wait(30) != 0
    server.wait_for(r"HaltServer|Reason: (App failed to load|Worker failed to boot)", 10)


@pytest.mark.timeout(60)
def test_reuse_port_is_refused(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, "--reuse-port", ready=False)
    assert server.proc.wait(30) != 0
    server.wait_for(r"does not support --reuse-port", 10)


@pytest.mark.timeout(60)
def test_preload_hup_says_to_use_usr2(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, "--preload")
    write_code(tmp_path, version("v2"))
    server.hup(2)
    assert "--preload is on" in server.output() and "USR2" in server.output()
    assert http_get(server.port).version == "v1"  # the master's cached import


@pytest.mark.timeout(90)
def test_usr2_new_master_retires_the_old_one(start_server, tmp_path):
    pidfile = tmp_path / "gunicorn.pid"
    server = start_gunicorn(start_server, tmp_path, "--pid", str(pidfile))
    old_master = server.pid
    assert int(pidfile.read_text()) == old_master
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, version("v2"))
        mark = server.mark()
        os.kill(old_master, signal.SIGUSR2)
        found = server.wait_for(r"USR2: the new master (\d+) is ready", 30, after=mark)
        new_master = int(found.group(1))
        assert server.proc.wait(30) == 0  # the old master retired by itself
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip() == str(new_master),
            10,
            "the pidfile to name the new master",
        )
        resp = http_get(server.port)
        assert resp.version == "v2"
        report = load.stop()
    assert_clean(report)
    os.kill(new_master, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{new_master}"), 30, "the new master to exit")


@pytest.mark.timeout(60)
def test_max_requests_restarts_drain_without_failures(start_server, tmp_path):
    server = start_gunicorn(
        start_server, tmp_path, "--max-requests", "40", "--max-requests-jitter", "10"
    )
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=0.5) as load:
        server.wait_for(r"drained \d+ connections .*max_requests reached", 30)
        wait_until(
            lambda: len(re.findall(r"max_requests reached", server.output())) >= 3,
            30,
            "three max_requests restarts",
        )
        report = load.stop()
    assert_clean(report)
    assert len(report.pids) >= 4, report.pids
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_ssl(start_server, tmp_path):
    cert, key = _self_signed(tmp_path)
    server = start_gunicorn(start_server, tmp_path, "--certfile", cert, "--keyfile", key)
    context = ssl.create_default_context(cafile=cert)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
    conn.request("GET", "/hello")
    assert b"version:v1" in conn.getresponse().read()
    write_code(tmp_path, version("v2"))
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for(r"generation 2 ready", 30, after=mark)
    # the kept-alive TLS connection, on an old worker that starts draining: every request on it
    # is answered, the first one after the drain began with "Connection: close"
    deadline = time.monotonic() + 10
    while True:
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert b"version:v1" in resp.read()
        if resp.getheader("connection") == "close":
            break
        assert time.monotonic() < deadline, "the old worker never answered Connection: close"
        time.sleep(0.05)  # pacing the client, not synchronising
    conn.close()

    # the other old worker may accept a fresh connection until it notices the promotion
    # (and serves it: nothing fails); the new code must answer within a bound
    def fresh_tls_get() -> bytes:
        fresh = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
        try:
            fresh.request("GET", "/hello")
            return fresh.getresponse().read()
        finally:
            fresh.close()

    wait_until(lambda: b"version:v2" in fresh_tls_get(), 10, "v2 over TLS")


def _self_signed(tmp_path) -> tuple[str, str]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.timeout(60)
def test_gunicorn_settings_keep_their_meaning(start_server, tmp_path):
    server = start_gunicorn(
        start_server,
        tmp_path,
        "--access-logfile",
        "-",
        "--limit-request-line",
        "200",
        workers=1,
        threads=1,
    )
    assert http_get(server.port, "/hello?from=access-log").status == 200
    server.wait_for(r'"GET /hello\?from=access-log HTTP/1.1" 200', 10)
    assert http_get(server.port, "/" + "x" * 300).status in (400, 414)  # 414 since 25
    # threads=1: one request at a time, the second waits for the first
    start = time.monotonic()
    threads = [
        threading.Thread(target=http_get, args=(server.port, "/hello?sleep=0.5")) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - start >= 0.95


@pytest.mark.timeout(60)
def test_sigterm_after_a_rollback_stops_at_once(start_server, tmp_path):
    """The old workers forgot the reload's SIGTERM after the rollback; a later SIGTERM to the
    master is a stop and must not be mistaken for the reload's."""
    server = start_gunicorn(start_server, tmp_path, graceful=20)
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_rollback(2, mark)
    time.sleep(1.0)  # the operator stops the server a moment after the failed reload
    start = time.monotonic()
    assert server.stop(30) == 0
    assert time.monotonic() - start < 10  # not gunicorn's SIGKILL at graceful_timeout (20 s)
    assert len(re.findall(r"\(generation 1\) drained .*SIGTERM", server.output(mark))) == 2


def test_grace_plugins_reload_waits_for_the_verdict(start_server, tmp_path):
    """``grace-plugins reload --pid <master>`` blocks until the new workers are promoted (exit
    0) or rolled back (exit 1, the old code still serving); ``status`` says what happened."""
    server = start_gunicorn(start_server, tmp_path)

    write_code(tmp_path, version("v2"))
    good = grace_cli("reload", "--pid", str(server.pid), "--timeout", "40")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 ready")
    wait_until(lambda: "version:v2" in http_get(server.port).body, 10, "v2")

    write_code(tmp_path, "raise RuntimeError('broken on purpose')\n")
    bad = grace_cli("reload", "--pid", str(server.pid), "--timeout", "40")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 rolled back")
    assert "version:v2" in http_get(server.port).body

    shown = grace_cli("status", "--pid", str(server.pid))
    assert shown.returncode == 0
    assert "serving: generation 2" in shown.stdout
    assert "upgrades finished: 2" in shown.stdout and "last upgrade: rolled_back" in shown.stdout


# -- the ready check (GRACE_READY_PATH) ----------------------------------------------------------
READY_ENV = {"GRACE_READY_PATH": "/healthz"}
#: Code that imports fine and fails every request (``status()``: see tests/apps/gunicorn_app.py).
FAILS_AT_REQUEST = {
    "raises": "VERSION = 'v2'\ndef status(environ):\n    raise RuntimeError('the view is broken')\n",  # noqa: E501
    "answers 500": "VERSION = 'v2'\ndef status(environ):\n    return '500 Internal Server Error'\n",
}
#: /healthz answers *answer* to the check (marked, with the Host of the bound address), else 503.
CHECKED = (
    "VERSION = 'v2'\n"
    "def status(environ):\n"
    "    if environ['PATH_INFO'] != '/healthz':\n"
    "        return '200 OK'\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK') != '1'"
    " or environ.get('HTTP_HOST') != '127.0.0.1:{port}':\n"
    "        return '503 Service Unavailable'\n"
    "    return {answer!r}\n"
)
HANGS_ON_CHECK = (
    "import time\nVERSION = 'v2'\n"
    "def status(environ):\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK'):\n"
    "        time.sleep(3600)\n"
    "    return '200 OK'\n"
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", sorted(FAILS_AT_REQUEST))
def test_ready_check_failure_rolls_back(start_server, tmp_path, kind):
    """Code that imports but fails at request time never takes traffic: rolled back, 0 failed
    requests, then a good HUP serves. ``raises`` sets the variable through ``raw_env``."""
    if kind == "raises":
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text("raw_env = ['GRACE_READY_PATH=/healthz']\n")
        server = start_gunicorn(start_server, tmp_path, "-c", str(conf))
    else:
        server = start_gunicorn(start_server, tmp_path, env=READY_ENV)
    old = set(server.workers())
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, FAILS_AT_REQUEST[kind])
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(2, mark)
        server.wait_until_workers(2, 20)
        assert server.proc.poll() is None, "the master halted"
        assert set(server.workers()) == old
        write_code(tmp_path, version("v3"))
        new = server.hup(3)
        resp = http_get(server.port)
        assert (resp.version, resp.pid in new) == ("v3", True)
        report = load.stop()
    assert_clean(report)
    out = server.output(mark)
    if kind == "raises":
        assert re.search(
            r"Traceback[^\n]*\n(.*\n)*.*RuntimeError: the view is broken\n(.*\n)*.*"
            r"ready check GET /healthz raised RuntimeError: the view is broken",
            out,
        ), out
    else:
        assert "ready check GET /healthz answered 500" in out
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["404 Not Found", "302 Found"])
def test_ready_check_below_500_is_ready(start_server, tmp_path, answer):
    server = start_gunicorn(start_server, tmp_path, env=READY_ENV)
    write_code(tmp_path, CHECKED.format(port=server.port, answer=answer))
    new = server.hup(2)
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True)
    assert http_get(server.port, "/healthz").status == 503  # a client's request: not the check
    assert "ready check" not in server.output()


@pytest.mark.timeout(60)
def test_ready_check_that_hangs_is_bounded(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, timeout=4, env=READY_ENV)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, HANGS_ON_CHECK)
        mark = server.mark()
        start = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(2, mark)
        assert time.monotonic() - start < 4 + 5  # gunicorn's timeout, plus the import
        assert server.proc.poll() is None
        write_code(tmp_path, version("v3"))
        server.hup(3)
        report = load.stop()
    assert_clean(report)
    assert re.search(r"ready check GET /healthz did not answer within", server.output(mark))


@pytest.mark.timeout(60)
def test_without_ready_path_nothing_changes(start_server, tmp_path):
    """The check is opt-in: without the variable, code that fails every request goes live."""
    server = start_gunicorn(start_server, tmp_path)
    write_code(tmp_path, FAILS_AT_REQUEST["answers 500"])
    server.hup(2)
    assert http_get(server.port).status == 500
    assert "ready check" not in server.output()


@pytest.mark.timeout(60)
def test_bad_ready_path_is_one_line(start_server, tmp_path):
    server = start_gunicorn(
        start_server, tmp_path, ready=False, env={"GRACE_READY_PATH": "healthz"}
    )
    assert server.proc.wait(30) != 0
    server.wait_for(r"GRACE_READY_PATH must be a URL path such as /healthz, not 'healthz'", 10)


# -- an upgrade never waits for drains ------------------------------------------------------------
@pytest.mark.timeout(120)
def test_hups_while_old_workers_drain_bring_new_code_at_once(start_server, tmp_path):
    """Three HUPs 2 s apart, each with a 10 s request in flight: each HUP reaches new code
    within a few seconds (gunicorn's reload() would wait for the drains, handling no signal),
    the master handles a signal (TTIN) while old workers drain, and each long request
    completes on the code it started on."""
    server = start_gunicorn(start_server, tmp_path, graceful=30)
    results: dict[int, object] = {}

    def long_get(gen: int) -> None:
        try:
            results[gen] = http_get(server.port, "/hello?sleep=10", timeout=40).version
        except Exception as exc:  # recorded, asserted below
            results[gen] = exc

    threads = []
    reached: list[float] = []
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        for gen in range(2, 5):
            thread = threading.Thread(target=long_get, args=(gen - 1,))
            thread.start()
            threads.append(thread)
            time.sleep(0.5)  # pacing: the long request reaches a worker before the HUP
            write_code(tmp_path, version(f"v{gen}"))
            mark = server.mark()
            start = time.monotonic()
            os.kill(server.pid, signal.SIGHUP)
            server.wait_for(rf"generation {gen} ready: \d+ workers serving", 30, after=mark)
            wait_until(lambda: http_get(server.port).version == f"v{gen}", 10, f"v{gen}")  # noqa: B023
            reached.append(time.monotonic() - start)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - start)))  # HUPs 2 s apart
        # the old workers still drain (their long requests run): the master handles signals
        assert any(thread.is_alive() for thread in threads)
        mark = server.mark()
        os.kill(server.pid, signal.SIGTTIN)
        server.wait_for(r"Handling signal: ttin", 3, after=mark)
        for thread in threads:
            thread.join(40)
        report = load.stop()
    assert_clean(report, slow=False)
    assert results == {1: "v1", 2: "v2", 3: "v3"}, results
    print("HUP -> new code (s):", [f"{r:.2f}" for r in reached])
    assert max(reached) < 5.0, [f"{r:.1f}" for r in reached]
    assert server.proc.poll() is None


def test_a_rollback_right_after_a_promotion_does_not_revive_replaced_workers(
    start_server, tmp_path
):
    """Generation N+1 is promoted and a broken N+2 arrives before N's workers looked: N's
    workers must drain anyway (a newer generation took over), not go back to serving when
    N+2 is rolled back. Seen once in CI: a v1 worker answered after v2's promotion."""
    server = start_gunicorn(start_server, tmp_path)
    gen = 1
    for number in range(2, 5):
        replaced = set(server.workers())
        write_code(tmp_path, version(f"v{number}"))
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(rf"generation {gen + 1} ready: \d+ workers serving", 30, after=mark)
        write_code(tmp_path, "raise RuntimeError('broken on purpose')\n")  # at once
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(gen + 2, mark)
        wait_until(
            lambda replaced=replaced: not replaced & set(server.workers()),
            20,
            f"the workers replaced by generation {gen + 1} to drain and exit",
        )
        for _ in range(6):
            assert http_get(server.port).version == f"v{number}"
        gen += 2
    assert server.proc.poll() is None
