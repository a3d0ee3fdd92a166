"""Kept-alive connections across HUPs with ``gunicorn -k grace_plugins.Worker``, whatever the
thread count: a request that arrived on a kept-alive connection (or a connection accepted and
not read yet) when the old worker drains is answered, with ``Connection: close``; only
connections with nothing pending are closed as idle."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import time

import pytest

from tests.harness import Load, holder_of, socket_count, wait_until
from tests.harness.gunicorn import (
    Gunicorn,
    InFlight,
    assert_clean,
    start_gunicorn,
    version,
    write_code,
)

pytest.importorskip("gunicorn")

#: gunicorn's bare defaults (1 worker, 1 thread, keep-alive 2 s), and 2 workers of 1 thread
#: (keep-alive 1 s: requests queued behind a 3 s request outlive it surely).
CONFIGS = {
    "defaults": {"workers": 1, "threads": None, "keepalive": None},
    "2 workers, 1 thread": {"workers": 2, "threads": 1, "keepalive": 1},
}


def occupy_every_worker(server: Gunicorn, seconds: float) -> list[InFlight]:
    """One slow request on every worker, each sent on a connection that worker holds."""
    busy: set[int] = set()
    sent = []
    for _ in server.workers():
        sent.append(InFlight.on_another_worker(server, f"/hello?sleep={seconds}", busy))
        busy.add(sent[-1].wait_held(server))
    return sent


@pytest.mark.timeout(240)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_keepalive_requests_across_hups_with_slow_requests_in_flight(
    start_server, tmp_path, config
):
    """Fresh connections, busy and idle keep-alive clients, and a 3 s request in flight on
    every worker at each of 3 HUPs: with one thread an old worker's thread is busy with the
    slow request while requests arrive on its kept-alive connections and wait, longer than
    ``keepalive``, for the thread. They are answered at drain time, none meets a closed
    connection."""
    # headroom: a 3 s request per worker, and the requests queued behind it on its one thread
    server = start_gunicorn(start_server, tmp_path, graceful=30, **CONFIGS[config])
    slow: list[InFlight] = []
    load = Load(server.port, fresh=2, keepalive=2, idle=2, slow=0, idle_seconds=0.5, timeout=40)
    with load:
        for gen in range(2, 5):
            slow += occupy_every_worker(server, 3.0)
            write_code(tmp_path, version(f"v{gen}"))
            server.hup(gen, timeout=60)  # promoted, and the old workers drained and exited
        report = load.stop()
    assert_clean(report, slow=False)
    assert report.by_kind.get("idle", 0) >= 6 and report.reconnects > 0, report.summary()
    assert {request.join().status for request in slow} == {200}
    assert "v4" in report.versions


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 4])
def test_a_connection_accepted_but_not_read_is_answered_at_drain(start_server, tmp_path, threads):
    """A client connects to an old worker and sends its request only once the worker drains
    (its listener copy closed), and later than ``keepalive``: the connection is not idle (it
    never had a request), so it is not closed as idle; the request is answered by the old
    code, with ``Connection: close``."""
    keepalive = 1
    server = start_gunicorn(start_server, tmp_path, threads=threads, keepalive=keepalive)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        port = client.getsockname()[1]
        holder = wait_until(lambda: holder_of(server.workers(), port), 10, "a worker to accept")
        sockets = socket_count(holder)
        write_code(tmp_path, version("v2"))
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_promoted(2, mark)
        # the old worker closed its listener copy: it drains, and holds our connection
        wait_until(lambda: socket_count(holder) < sockets, 10, "the old worker to drain")
        time.sleep(keepalive + 1.0)  # the scenario: a slow client, not a synchronisation
        client.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.makefile("rb").read()
    finally:
        client.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head, answer
    assert f"ospid:{holder} version:v1".encode() in body, answer


@pytest.mark.timeout(90)
@pytest.mark.parametrize("threads", [1, 4])
def test_keepalive_clients_idle_3s_across_4_hups(start_server, tmp_path, threads):
    server = start_gunicorn(start_server, tmp_path, threads=threads, keepalive=5)
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
def test_a_kept_alive_tls_connection_is_answered_while_its_worker_drains(start_server, tmp_path):
    cert, key = self_signed(tmp_path)
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


def self_signed(tmp_path) -> tuple[str, str]:
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
