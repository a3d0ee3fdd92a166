"""ESTABLISHED TCP sockets from the kernel's sock_diag netlink interface (what ``ss`` uses).

Why not ``/proc/net/tcp``: that table lists every socket, TIME_WAIT ones included. A suite of
load tests leaves tens of thousands of them, and one read then takes up to seconds on a busy
2-core machine: long enough for a 3-second request to start and end between two looks. Here
the kernel filters by state and sends only the few ESTABLISHED sockets.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_ESTABLISHED = 1

NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
INET_DIAG_REQUEST = struct.Struct("=BBBBI48s")  # family, protocol, ext, pad, states, id
INET_DIAG_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # ... then uid, inode


class Unavailable(OSError):
    """No sock_diag here (not Linux, or the interface is filtered): the caller falls back."""


def _request(family: int) -> bytes:
    body = INET_DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_ESTABLISHED, bytes(48))
    header = NLMSG_HEADER.pack(
        NLMSG_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    return header + body


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each netlink message in *data*."""
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        found.append((kind, data[offset + NLMSG_HEADER.size : offset + length]))
        offset += (length + 3) & ~3
    return found


def established(family: int) -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of each ESTABLISHED TCP socket of *family*."""
    if not hasattr(socket, "AF_NETLINK"):
        raise Unavailable("no netlink on this system")
    sockets: list[tuple[int, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as link:
        link.settimeout(5)
        link.sendto(_request(family), (0, 0))
        while True:
            for kind, payload in _messages(link.recv(1 << 16)):
                if kind == NLMSG_DONE:
                    return sockets
                if kind == NLMSG_ERROR:
                    raise Unavailable(f"sock_diag refused the request: {payload[:4].hex()}")
                fields = INET_DIAG_MESSAGE.unpack_from(payload)
                local, remote, inode = fields[4], fields[5], fields[-1]
                sockets.append((int.from_bytes(local, "big"), int.from_bytes(remote, "big"), inode))
