"""The Django adapter's pieces in process, with pytest-django's fixtures and settings configured
for this module only (``tests/django_settings.py``); nothing here sets
``DJANGO_SETTINGS_MODULE`` for other test files."""

from __future__ import annotations

import http.client
import os
import socket
import threading

import pytest

from tests.harness import wait_until

django = pytest.importorskip("django")


# -- in process (pytest-django) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_configured():
    """Django set up in this process with tests/django_settings.py, for this module's
    in-process tests only (no DJANGO_SETTINGS_MODULE left in the environment)."""
    pytest.importorskip("pytest_django")
    from django.conf import settings

    if not settings.configured:
        from tests import django_settings

        settings.configure(**{k: v for k, v in vars(django_settings).items() if k.isupper()})
        django.setup()
    return settings


def test_drain_says_connection_close_in_process(django_configured, settings):
    """Django's threaded server on a listener: keep-alive until the drain, then
    ``Connection: close`` on the next response of the same connection."""
    from django.core.servers.basehttp import WSGIServer, get_internal_wsgi_application

    from grace_plugins.django.server import hot_server_class, stop_soon
    from grace_plugins.drain import ConnectionTracker

    settings.DEBUG = True
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    tracker = ConnectionTracker(keepalive_timeout=5)
    serving = threading.Event()
    cls = hot_server_class(
        WSGIServer,
        listener=listener,
        tracker=tracker,
        threaded=True,
        on_serving=lambda server: serving.set(),
    )
    server = cls(("127.0.0.1", 0), None)
    server.set_app(get_internal_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert serving.wait(10)
        conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=10)
        conn.request("GET", "/hello")
        first = conn.getresponse()
        assert first.read() == f"ospid:{os.getpid()}".encode()
        assert not first.will_close
        wait_until(lambda: tracker.counts() == (0, 1), 5, "an idle keep-alive connection")
        tracker.begin_drain()
        conn.request("GET", "/hello")
        second = conn.getresponse()
        assert second.read() == f"ospid:{os.getpid()}".encode()
        assert second.getheader("Connection") == "close" and second.will_close
        conn.close()
        report = tracker.drain(5)
        assert report.closed_at_deadline == 0
    finally:
        stop_soon(server)()
        thread.join(5)
        server.server_close()
        listener.close()
