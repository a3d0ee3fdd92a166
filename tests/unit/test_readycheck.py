"""The ready check's verdicts, on WSGI callables in this process (no server, no socket I/O)."""

from __future__ import annotations

import socket
import threading

import pytest

from grace_plugins.readycheck import NotReady, check_ready, host_and_port, ready_environ


def app_answering(status: str, body: list[bytes] | None = None):
    seen: list[dict] = []

    def app(environ, start_response):
        seen.append(environ)
        start_response(status, [("Content-Type", "text/plain")])
        return body or [b"ok"]

    app.seen = seen  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize("status", ["200 OK", "204 No Content", "302 Found", "404 Not Found"])
def test_below_500_is_ready(status):
    app = app_answering(status)
    code = check_ready(app, "/healthz?deep=1", host="127.0.0.1", port=8000, timeout=5)
    assert code == int(status[:3])
    environ = app.seen[0]
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"]) == ("GET", "/healthz")
    assert environ["QUERY_STRING"] == "deep=1"
    assert environ["HTTP_HOST"] == "127.0.0.1:8000"
    assert environ["HTTP_X_GRACE_READY_CHECK"] == "1"


@pytest.mark.parametrize("status", ["500 Internal Server Error", "503 Service Unavailable"])
def test_500_and_more_is_not_ready(status):
    with pytest.raises(NotReady, match=rf"^ready check GET /h answered {status[:3]}$"):
        check_ready(app_answering(status), "/h", host="localhost", port=80, timeout=5)


def test_exception_is_not_ready_and_its_traceback_is_shown(capsys):
    def app(environ, start_response):
        raise KeyError("DATABASE_URL")

    with pytest.raises(NotReady, match=r"^ready check GET /h raised KeyError: 'DATABASE_URL'$"):
        check_ready(app, "/h", host="localhost", port=80, timeout=5)
    assert "Traceback" in capsys.readouterr().err


def test_exception_while_streaming_the_body_is_not_ready():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise RuntimeError("template error")

    with pytest.raises(NotReady, match="raised RuntimeError: template error"):
        check_ready(app, "/h", host="localhost", port=80, timeout=5)


def test_body_close_is_called():
    closed = threading.Event()

    class Body(list):
        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body([b"x"])

    check_ready(app, "/h", host="localhost", port=80, timeout=5)
    assert closed.is_set()


def test_no_answer_in_time_is_not_ready():
    release = threading.Event()

    def app(environ, start_response):
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    try:
        with pytest.raises(NotReady, match=r"^ready check GET /h did not answer within 0\.2 s$"):
            check_ready(app, "/h", host="localhost", port=80, timeout=0.2)
    finally:
        release.set()


def test_no_status_is_not_ready():
    with pytest.raises(NotReady, match="answered no status"):
        check_ready(lambda e, s: [b""], "/h", host="localhost", port=80, timeout=5)


def test_https_default_port_host_header():
    environ = ready_environ("/a%20b", "example.org", 443, "https")
    assert environ["HTTP_HOST"] == "example.org"
    assert environ["PATH_INFO"] == "/a b"
    assert environ["wsgi.url_scheme"] == "https"


def test_host_and_port_of_listeners(tmp_path):
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        assert host_and_port(tcp) == ("127.0.0.1", tcp.getsockname()[1])
    with socket.socket() as anywhere:
        anywhere.bind(("0.0.0.0", 0))
        assert host_and_port(anywhere)[0] == "localhost"
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "s"))
        assert host_and_port(unix) == ("localhost", 80)
    if socket.has_ipv6:
        try:
            six = socket.socket(socket.AF_INET6)
            six.bind(("::1", 0))
        except OSError:
            return
        with six:
            assert host_and_port(six) == ("[::1]", six.getsockname()[1])
