"""One harness for the end-to-end tests and the benchmarks: real server processes with bounded
waits and clean-up by recorded identity (:mod:`.server`), client load and the one failure
classifier (:mod:`.load`, :mod:`.client`), the one ``/proc`` reader (:mod:`.procfs`), the code
under upgrade (:mod:`.code`) and systemd's side of the protocols (:mod:`.systemd`).

Imported directly, not re-exported here: the servers under test as the tests start them
(:mod:`.core`, :mod:`.flask_site`, :mod:`.django_site`), malformed inherited inputs
(:mod:`.inherit`), a long request in flight (:mod:`.inflight`) and what an upgrade waited for
(:mod:`.upgrades`).

It imports nothing from ``grace_plugins``: it drives the product from outside, as a user would.
"""

from tests.harness.client import (
    BODY,
    FAILURE_KINDS,
    Response,
    classify,
    classify_response,
    http_get,
    read_response,
)
from tests.harness.code import (
    CHILD_PROBE,
    broken_at_import,
    write_bench_code,
    write_code,
    write_module,
)
from tests.harness.load import Load, LoadEngine, LoadReport, Outcome
from tests.harness.procfs import (
    LINUX_PROC,
    child_pids,
    established_connections,
    fd_count,
    fd_links,
    gone_or_zombie,
    holder_of,
    is_zombie,
    live_children,
    socket_count,
    zombies,
)
from tests.harness.server import (
    INHERITED_VARS,
    LISTEN_LINE,
    PYTHON,
    READY_LINE,
    ROOT,
    Owned,
    ServerProcess,
    grace_cli,
    joined,
    server_env,
    wait_served_by,
    wait_until,
)
from tests.harness.systemd import (
    SOCKET_ACTIVATION_LAUNCHER,
    Notification,
    NotifySocket,
    socket_activated,
)

__all__ = [
    "broken_at_import",
    "established_connections",
    "holder_of",
    "BODY",
    "CHILD_PROBE",
    "FAILURE_KINDS",
    "INHERITED_VARS",
    "LINUX_PROC",
    "LISTEN_LINE",
    "PYTHON",
    "READY_LINE",
    "ROOT",
    "SOCKET_ACTIVATION_LAUNCHER",
    "Load",
    "LoadEngine",
    "LoadReport",
    "Notification",
    "NotifySocket",
    "Outcome",
    "Owned",
    "Response",
    "ServerProcess",
    "child_pids",
    "classify",
    "classify_response",
    "fd_count",
    "fd_links",
    "gone_or_zombie",
    "grace_cli",
    "http_get",
    "is_zombie",
    "joined",
    "live_children",
    "read_response",
    "server_env",
    "socket_activated",
    "socket_count",
    "wait_served_by",
    "wait_until",
    "write_bench_code",
    "write_code",
    "write_module",
    "zombies",
]
