"""``gunicorn -k grace_plugins.Worker``: how old workers stop. In-flight requests finish, kept
alive connections are answered or closed cleanly, SIGTERM drains, and an upgrade never waits
for the drains of the workers it replaced."""

from __future__ import annotations

import http.client
import os
import re
import signal
import ssl
import time

import pytest

from tests.harness import Load, http_get, wait_until
from tests.harness.gunicorn import (
    BROKEN,
    InFlight,
    assert_clean,
    start_gunicorn,
    version,
    write_code,
)

pytest.importorskip("gunicorn")


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
    slow = [InFlight(server.port, "/hello?sleep=1.5", timeout=20) for _ in range(3)]
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/hello")
    idle.getresponse().read()
    for request in slow:  # accepted: the stop must finish them
        request.wait_held(server)
    assert server.stop(30) == 0
    idle.close()
    assert [request.join(10).status for request in slow] == [200, 200, 200]
    assert re.search(r"drained \d+ connections .*SIGTERM", server.output())


@pytest.mark.timeout(90)
def test_sigterm_right_after_a_rollback_stops(start_server, tmp_path):
    """The old workers hold (and then forget) the failed reload's SIGTERM; a SIGTERM to the
    master at once after the rollback is a stop, and must not be mistaken for the reload's:
    the old workers drain at once instead of serving until gunicorn kills them at
    graceful_timeout (the master records its stop before it SIGTERMs them)."""
    server = start_gunicorn(start_server, tmp_path, graceful=120)
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for(r"generation 2 rolled back", 20, after=mark)
    assert server.stop(45) == 0  # not gunicorn's kill at graceful_timeout (120 s)
    assert len(re.findall(r"\(generation 1\) drained .*SIGTERM", server.output(mark))) == 2


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
    server.wait_promoted(2, mark)
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
    pytest.importorskip("cryptography")
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


@pytest.mark.timeout(120)
def test_hups_while_old_workers_drain_bring_new_code_at_once(start_server, tmp_path):
    """Three HUPs, each with a 10 s request in flight (accepted by a worker before the HUP).
    gunicorn's reload() would wait for the drains, handling no signal; ours does not: each HUP
    reaches new code while the workers replaced by the HUP before it still drain their long
    request, the master handles a signal (TTIN) meanwhile, and each long request completes on
    the code that accepted it."""
    server = start_gunicorn(start_server, tmp_path, graceful=30)
    generation_of = dict.fromkeys(server.workers(), 1)
    long: list[tuple[InFlight, int]] = []  # each long request and the worker that accepted it
    reached: dict[int, float] = {}  # when each HUP's new code first answered
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        for gen in range(2, 5):
            request = InFlight(server.port, "/hello?sleep=10")
            long.append((request, request.wait_held(server)))
            write_code(tmp_path, version(f"v{gen}"))
            mark = server.mark()
            os.kill(server.pid, signal.SIGHUP)
            generation_of.update(dict.fromkeys(server.wait_promoted(gen, mark), gen))
            wait_until(lambda: http_get(server.port).version == f"v{gen}", 10, f"v{gen}")  # noqa: B023
            reached[gen] = time.monotonic()
        mark = server.mark()
        os.kill(server.pid, signal.SIGTTIN)
        server.wait_for(r"Handling signal: ttin", 30, after=mark)
        ttin = server.times_of(r"Handling signal: ttin", mark)[0]
        answers = [(request.join(40), holder) for request, holder in long]
        report = load.stop()
    assert_clean(report, slow=False)
    for resp, holder in answers:
        assert resp.pid == holder and resp.version == f"v{generation_of[holder]}", answers
    finished = [request.finished or 0.0 for request, _ in long]
    # HUP 3 and HUP 4: the workers that HUP 2 (3) replaced still held their long request
    assert reached[3] < finished[0] and reached[4] < finished[1], (reached, finished)
    assert ttin < finished[2], "the master handled TTIN only once the drains ended"
    assert server.proc.poll() is None
