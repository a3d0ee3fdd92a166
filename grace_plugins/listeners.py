"""Listening sockets: bind them, name them, and adopt (validated) inherited ones.

A listener is known by its *name*, the address it listens on: ``tcp:127.0.0.1:8000``,
``tcp:[::1]:8000`` or ``unix:/run/app.sock``. Names travel with the fds to the next generation,
which checks that each fd really is a listening stream socket on that address before serving.

Every listener is made non-blocking once. The flag belongs to the open file that all
generations share, so a process that loses an ``accept()`` race gets ``EAGAIN`` instead of
sitting blocked where no stop request reaches it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from grace_plugins.errors import GraceError

#: Backlog of pending connections; generous, so a slow import under load overflows nothing.
DEFAULT_BACKLOG = 2048


@dataclass(frozen=True)
class Address:
    """Where to listen: a TCP host and port, or a Unix socket path."""

    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str, default_host: str = "127.0.0.1") -> Address:
    """Parse ``8000``, ``host:8000``, ``[::1]:8000``, ``tcp:host:port`` or ``unix:/path``.

    :raises GraceError: when the text is not an address.
    """
    original = text
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise GraceError(f"Listen address {original!r} has no path: write unix:/path/to.sock.")
        return Address("unix", path=os.path.abspath(path))
    text = text.removeprefix("tcp:")
    host, port_text = default_host, text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if sep else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise GraceError(
            f"Listen address {original!r} is ambiguous: put IPv6 hosts in brackets, [::1]:8000."
        )
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise GraceError(
            f"Listen address {original!r} has no valid port: use HOST:PORT with a port 0-65535."
        ) from None
    return Address("tcp", host=host or default_host, port=port)


def name_of(sock: socket.socket) -> str:
    """Return the listener name of a bound socket (its real address, port 0 resolved)."""
    if sock.family == socket.AF_UNIX:
        path = sock.getsockname()
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        return str(Address("unix", path=path))
    host, port = sock.getsockname()[:2]
    return str(Address("tcp", host=host, port=port))


def bind(address: Address, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """Bind and listen on *address*; the socket is non-blocking and not inheritable.

    :raises GraceError: when the address is in use, cannot be resolved or is not allowed.
    """
    if address.kind == "unix":
        return _bind_unix(address.path, backlog)
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise GraceError(
            f"Cannot resolve host {address.host!r} ({exc.strerror}): use an IP address or a"
            " name this machine resolves."
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GraceError(
                f"Port {address.port} is in use by another program. Either identify and stop"
                " that program, or start the server with a different port."
            ) from None
        if exc.errno == errno.EACCES:
            raise GraceError(
                f"Permission denied binding {address}: ports below 1024 need privileges;"
                " use a higher port or socket activation."
            ) from None
        raise GraceError(f"Cannot listen on {address}: {exc.strerror}.") from None
    sock.setblocking(False)
    return sock


def _bind_unix(path: str, backlog: int) -> socket.socket:
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise GraceError(
                f"{path} exists and is not a socket: remove it or choose another path."
            )
        if _unix_socket_alive(path):
            raise GraceError(
                f"Unix socket {path} is in use by another server: stop it or choose another path."
            )
        os.unlink(path)  # a stale file left by a server that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise GraceError(f"Cannot listen on unix:{path}: {exc.strerror}.") from None
    sock.setblocking(False)
    return sock


def _unix_socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def adopt(fd: int, expected_name: str | None, origin: str) -> socket.socket:
    """Take ownership of inherited *fd* after checking it is the listener we expect.

    The returned socket owns the fd number itself (no duplicate to leak), is non-blocking and
    close-on-exec, so programs the app starts do not receive it.

    :param origin: where the fd came from, for the error message (a variable's name).
    :raises GraceError: naming the fd, what is wrong with it and what to do.
    """
    check_listener(fd, origin, expected_name)
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def check_listener(fd: int, origin: str, expected_name: str | None = None) -> None:
    """Check that inherited *fd* is a listening stream socket (on *expected_name*, if given),
    leaving it as it is: for a server that adopts it itself.

    :raises GraceError: naming the fd, what is wrong with it and what to do.
    """
    problem = _fd_problem(fd, "a listener", lambda sock: _listener_problem(sock, expected_name))
    if problem:
        raise GraceError(
            f"{origin}: fd {fd} {problem}: start the server without {origin} (it binds its own"
            " socket) or pass a listening socket."
        )


def check_channel(fd: int, origin: str) -> None:
    """Check that inherited *fd* can be the supervisor's channel: a connected Unix stream
    socket (one end of a socketpair). The fd is left as it was.

    :raises GraceError: naming the fd, what it is instead, and what to do.
    """
    problem = _fd_problem(fd, "the supervisor's channel", _channel_problem)
    if problem:
        raise GraceError(
            f"{origin}: channel fd {fd} {problem}: start the server without {origin} (only the"
            " supervisor sets it, for the generations it starts)."
        )


def _fd_problem(fd: int, role: str, inspect: Callable[[socket.socket], str]) -> str:
    """What is wrong with inherited *fd* for its *role* ("" if nothing): not a socket, or
    what *inspect* finds in the socket. The fd is left as it was."""
    problem = _not_a_socket(fd, role)
    if problem:
        return problem
    sock = socket.socket(fileno=fd)
    try:
        return inspect(sock)
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror})"
    finally:
        sock.detach()  # not ours: leave it as we found it


def _not_a_socket(fd: int, role: str) -> str:
    """What is wrong with inherited *fd* if it is not a socket at all ("" if it is one)."""
    if fd < 3:
        return f"is standard input/output, not {role}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "is not open"
    if stat.S_ISSOCK(mode):
        return ""
    what = "a regular file" if stat.S_ISREG(mode) else "a pipe" if stat.S_ISFIFO(mode) else ""
    return f"is {what}, not a socket" if what else "is not a socket"


def _channel_problem(sock: socket.socket) -> str:
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "is a listening socket, not the supervisor's channel"
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        return "is not a Unix stream socket, as the supervisor's channel is"
    try:
        sock.getpeername()
    except OSError:
        return "is a Unix socket connected to nothing, not the supervisor's channel"
    return ""


def _listener_problem(sock: socket.socket, expected_name: str | None) -> str:
    if sock.type != socket.SOCK_STREAM:
        return "is a datagram (UDP) socket, not a stream listener"
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return f"has unsupported address family {sock.family!r}"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "is a socket that is not listening"
    actual = name_of(sock)
    if expected_name and actual != expected_name:
        return f"listens on {actual}, but {expected_name} was expected"
    return ""


def unlink_unix(sock: socket.socket) -> None:
    """Remove a Unix listener's socket file; only on final stop, never during a handover."""
    if sock.family != socket.AF_UNIX:
        return
    path = sock.getsockname()
    if isinstance(path, str) and path and not path.startswith("\0"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
