"""systemd end to end, for the core and each adapter: the listener comes from socket activation
(``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``, fd 3, as systemd passes it) and the notify
protocol is read from a real ``NOTIFY_SOCKET`` that learns each sender's pid from the kernel, as
systemd does (``NotifyAccess=main``: only the main pid may speak).

One scenario for all: ``READY=1`` once the app serves (on the test's own socket), the app
inheriting none of systemd's variables; then a good upgrade with ``grace-plugins reload`` as
``ExecReload=`` runs it (``RELOADING=1`` with ``MONOTONIC_USEC``, and ``READY=1`` already sent
when the command returns), a broken one (the same, ``READY=1`` saying it was rolled back, the
previous code serving), then ``SIGTERM`` with a slow request in flight (``STOPPING=1`` at once,
the request answered, exit status 0).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.harness import (
    PYTHON,
    NotifySocket,
    ServerProcess,
    django_site,
    flask_site,
    grace_cli,
    http_get,
    socket_activated,
    wait_until,
    write_code,
)
from tests.harness.core import SERVER

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_PASSCRED"), reason="sender credentials need Linux (SO_PASSCRED)"
)

BROKEN = "raise RuntimeError('broken on purpose')"
#: Seconds the request in flight during the stop takes.
SLOW = 4.0
ADOPTED = (
    r"socket activation: serving the 1 socket\(s\) systemd passed \(LISTEN_FDS\):"
    r" http=tcp:127\.0\.0\.1:{port}$"
)


@dataclass
class Service:
    """How to run one adapter: its command line and how to change its code."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    set_version: Callable[[str], None]
    break_code: Callable[[], None]
    cls: type[ServerProcess] = ServerProcess
    #: the line that says which socket it serves ({port}: the one the test passed)
    listening: str = ADOPTED


def core_service(tmp_path) -> Service:
    write_code(tmp_path, "v1")
    return Service(
        [PYTHON, SERVER, "unused:0"],
        str(tmp_path),
        {},
        lambda v: write_code(tmp_path, v),
        lambda: write_code(tmp_path, "v3", BROKEN),
    )


def flask_service(tmp_path) -> Service:
    if not os.path.exists(flask_site.FLASK):
        pytest.skip("flask is not installed")
    path = flask_site.seed_app(tmp_path)
    return Service(
        [flask_site.FLASK, "--app", "app.py", "hotrun", "-p", "0"],
        str(tmp_path),
        {"PYTHONDONTWRITEBYTECODE": "1"},
        lambda v: flask_site.set_version(path, v),
        lambda: flask_site.set_version(path, "v3", BROKEN + "\n"),
    )


def django_service(tmp_path) -> Service:
    pytest.importorskip("django")
    site = django_site.copy_site(tmp_path)
    return Service(
        [PYTHON, "manage.py", "runhot", "--noreload", "127.0.0.1:0"],
        str(site),
        {"PYTHONDONTWRITEBYTECODE": "1", "EXAMPLE_LOG_REQUESTS": "0"},
        lambda v: django_site.set_version(site, v),
        lambda: django_site.set_version(site, "v3", BROKEN),
    )


def gunicorn_service(tmp_path) -> Service:
    pytest.importorskip("gunicorn")
    from tests.harness.gunicorn import APPS, Gunicorn, control_socket, version, write_code

    write_code(tmp_path, version("v1"))
    argv = [
        PYTHON, "-m", "gunicorn", "-k", "grace_plugins.Worker",
        "--chdir", str(tmp_path), "--pythonpath", APPS,
        "--workers", "2", "--threads", "2", "--timeout", "10", "--graceful-timeout", "15",
        *control_socket(tmp_path),
        "gunicorn_app:app",
    ]  # fmt: skip
    return Service(
        argv,
        str(tmp_path),
        {"PYTHONDONTWRITEBYTECODE": "1"},
        lambda v: write_code(tmp_path, version(v)),
        lambda: write_code(tmp_path, BROKEN + "\n"),
        cls=Gunicorn,
        listening=r"Listening at: http://127\.0\.0\.1:{port} ",
    )


SERVICES = {
    "core": core_service,
    "flask": flask_service,
    "django": django_service,
    "gunicorn": gunicorn_service,
}


def app_environment(port: int, name: str, service: Service) -> str | None:
    """The value of *name* in the environment of the process that serves *port*."""
    if service.cls is not ServerProcess:  # gunicorn: workers are forked, ask the app
        found = re.search(rf"env:{name}=(.*)", http_get(port, f"/hello?env={name}").body)
        assert found, "the test app shows its environment"
        return None if found.group(1) == "-" else found.group(1)
    pid = http_get(port).pid  # a generation: exec'd, so /proc shows its environment
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {key.decode(): value.decode() for key, value in pairs}.get(name)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_socket_activation_and_notify(start_server, tmp_path, name):
    service = SERVICES[name](tmp_path)
    notify = NotifySocket(str(tmp_path / "notify"))
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        argv, env = socket_activated(service.argv, listener)
        server = start_server(
            argv,
            cwd=service.cwd,
            env={**service.env, **env, "NOTIFY_SOCKET": notify.path},
            cls=service.cls,
            pass_fds=[listener.fileno()],
        )
        seen = []

        def expect(field: str, what: str, timeout: float = 60) -> dict[str, str]:
            message = notify.next(timeout, what)
            seen.append(message)
            assert message.pid == server.pid, f"{what}: sent by pid {message.pid}, not the main pid"
            assert message.fields.get(field) == "1", f"{what}: {message.fields}"
            return message.fields

        ready = expect("READY", "the first generation is ready")
        assert "serving with generation 1" in ready["STATUS"], ready
        # ready means serving, on the socket systemd passed (the server bound none of its own)
        assert http_get(port).version == "v1"
        server.wait_for(service.listening.format(port=port), 5)
        for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):  # systemd's, not the app's
            assert app_environment(port, name, service) is None, name

        # ExecReload=grace-plugins reload: systemd ends the reload when the command exits, so
        # by then READY=1 must already be in the notify socket (read without waiting: timeout 0)
        service.set_version("v2")
        before = monotonic_usec()
        good = grace_cli("reload", "--pid", str(server.pid), "--timeout", "60")
        assert good.returncode == 0, good.stdout + good.stderr
        reloading = expect("RELOADING", "a HUP starts an upgrade")
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec(), reloading
        upgraded = expect("READY", "READY=1 before the reload command returns", timeout=0)
        assert "serving with generation 2" in upgraded["STATUS"], upgraded
        wait_until(lambda: http_get(port).version == "v2", 10, "the new code to serve")

        service.break_code()
        bad = grace_cli("reload", "--pid", str(server.pid), "--timeout", "60")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        expect("RELOADING", "a broken HUP starts an upgrade")
        rolled_back = expect("READY", "READY=1 before the reload command fails", timeout=0)
        assert "upgrade rolled back" in rolled_back["STATUS"], rolled_back
        assert http_get(port).version == "v2"

        # a slow request in flight: the stop waits for it, and STOPPING=1 comes at its start
        slow = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        slow.request("GET", f"/hello?sleep={SLOW}")
        # accepts are first come, first served: once a later connection is answered, the slow
        # one is in the server's hands
        assert http_get(port).version == "v2"
        stop_sent = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        expect("STOPPING", "SIGTERM stops the service", timeout=30)
        assert time.monotonic() - stop_sent < SLOW / 2, "STOPPING=1 came at the end of the stop"
        answer = slow.getresponse()
        assert (answer.status, "version:v2" in answer.read().decode()) == (200, True)
        slow.close()
        assert server.proc.wait(30) == 0
        # systemd keeps its socket: connections made now wait for the next start
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        listener.close()
        notify.close()


@pytest.mark.timeout(90)
def test_gunicorn_hup_while_starting_waits_for_the_start(start_server, tmp_path):
    """A HUP before the first workers are ready waits for them (one generation starts at a
    time): systemd hears ``READY=1`` once they serve, then the held HUP's reload, with its own
    ``RELOADING=1`` and ``READY=1``."""
    service = gunicorn_service(tmp_path)
    with open(tmp_path / "appcode.py", "a") as handle:
        handle.write("import time\ntime.sleep(3)\n")  # every generation takes 3 s to start
    notify = NotifySocket(str(tmp_path / "notify"))
    try:
        server = start_server(
            [*service.argv[:-1], "--bind", "127.0.0.1:0", service.argv[-1]],
            cwd=service.cwd,
            env={**service.env, "NOTIFY_SOCKET": notify.path},
            cls=service.cls,
        )
        server.wait_for(r"Booting worker with pid", 30)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"HUP held", 30)
        assert "generation 1 ready" not in server.output()  # the HUP came while starting
        ready = notify.next(60, "the start is over")
        assert (ready.pid, ready.fields.get("READY")) == (server.pid, "1"), ready.fields
        assert "serving with generation 1" in ready.fields["STATUS"], ready.fields
        reloading = notify.next(60, "the held HUP reloads")
        assert reloading.fields.get("RELOADING") == "1", reloading.fields
        ready = notify.next(60, "the reload is over")
        assert "serving with generation 2" in ready.fields["STATUS"], ready.fields
        server.wait_ready()
        assert http_get(server.port).version == "v1"
    finally:
        notify.close()
