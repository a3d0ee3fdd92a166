"""wrk, the C load generator: find it (or install it), run it, read its numbers as JSON.

Python client threads on a 2-core machine saturate before the servers do, so throughput and
latency percentiles come from wrk (epoll, keep-alive). A small Lua script prints one JSON line
from wrk's ``done()``: requests, duration, socket errors by kind, HTTP errors, p50/p99/max
latency, and, when asked, the code versions seen in the bodies and the non-2xx answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

HINT = "wrk not found: apt-get install wrk (Debian/Ubuntu) or brew install wrk (macOS)"
MARK = "WRK_JSON "
#: Per-response Lua (versions, non-2xx) costs wrk CPU: only the upgrade runs use it.
COUNTING = """
versions = {}
non2xx = 0
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  local v = body:match("version:(%S+)")
  if v then versions[v] = (versions[v] or 0) + 1 end
end
"""
SUMMARY = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local e = summary.errors
  local n, seen, parts = -1, {}, {}
  for _, t in ipairs(threads) do
    local count = t:get("non2xx")
    if count then n = math.max(n, 0) + count end
    for k, c in pairs(t:get("versions") or {}) do seen[k] = (seen[k] or 0) + c end
  end
  for k, c in pairs(seen) do table.insert(parts, string.format('"%s": %d', k, c)) end
  io.write(string.format('MARK{"requests": %d, "duration_us": %d, "connect": %d, "read": %d,'
    .. ' "write": %d, "status": %d, "timeout": %d, "p50_us": %.0f, "p99_us": %.0f,'
    .. ' "max_us": %.0f, "non2xx": %d, "versions": {%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, n, table.concat(parts, ", ")))
end
""".replace("MARK", MARK)


class WrkError(RuntimeError):
    """wrk could not run, or printed no summary."""


@dataclass
class WrkResult:
    """One wrk run as its ``done()`` saw it (latencies in seconds)."""

    requests: int
    seconds: float
    connect: int
    read: int
    write: int
    status: int  # HTTP status >= 400 (wrk's own count)
    timeout: int
    p50: float
    p99: float
    max: float
    non2xx: int = -1  # -1: not counted (no per-response script)
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / max(self.seconds, 1e-6)

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        """Read the summary line of *output*; raises WrkError when there is none."""
        for line in output.splitlines():
            if line.startswith(MARK):
                d = json.loads(line[len(MARK) :])
                return cls(
                    d["requests"],
                    d["duration_us"] / 1e6,
                    d["connect"],
                    d["read"],
                    d["write"],
                    d["status"],
                    d["timeout"],
                    d["p50_us"] / 1e6,
                    d["p99_us"] / 1e6,
                    d["max_us"] / 1e6,
                    d["non2xx"],
                    d["versions"],
                )
        last = [line.strip() for line in output.strip().splitlines()[:2]]
        raise WrkError("wrk printed no summary: " + " | ".join(last))


def find(install: bool = True) -> str | None:
    """The path of wrk; when missing and *install*, try the system's package manager as root
    (``apt-get install -y wrk``). Blocks up to a few minutes; None when still missing."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    install_wrk = ["apt-get", "install", "-y", "-q", "wrk"]
    for steps in ([install_wrk], [["apt-get", "update", "-q"], install_wrk]):
        for step in steps:  # a stale package list needs an update first
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(step, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def version(path: str) -> str:
    """wrk's version line (``wrk 4.1.0 [epoll]``); wrk prints it with its usage, status 1."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).strip().splitlines()[:1] or ["wrk (unknown version)"]
    return first[0].split(" Copyright")[0].strip()


class Wrk:
    """One wrk process against ``http://127.0.0.1:PORT/hello``, bounded by its duration.

    ``start()`` returns at once; ``result()`` waits for the end (duration + a margin) and
    parses it. *close* sends ``Connection: close``: a fresh connection per request.
    """

    def __init__(
        self,
        path: str,
        port: int,
        seconds: int,
        connections: int,
        *,
        close: bool = False,
        count: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.seconds = seconds
        self._dir = tempfile.mkdtemp(prefix="grace-wrk-")
        script = os.path.join(self._dir, "summary.lua")
        with open(script, "w") as handle:
            handle.write((COUNTING if count else "") + SUMMARY)
        self.argv = [
            path,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={timeout:g}s",
            "-s",
            script,
            *(["-H", "Connection: close"] if close else []),
            f"http://127.0.0.1:{port}/hello",
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Wrk:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return self

    def result(self) -> WrkResult:
        """Wait for wrk to finish (killed after its duration + 30 s); raises WrkError."""
        assert self.proc is not None, "start() first"
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise WrkError(f"wrk ran past {self.seconds + 30} s") from None
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        return WrkResult.parse(out)

    def stop(self) -> None:
        """Kill wrk if it still runs (on an error elsewhere)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        shutil.rmtree(self._dir, ignore_errors=True)


def run(path: str, port: int, seconds: int, connections: int, close: bool = False) -> WrkResult:
    """One wrk run, blocking for *seconds*; raises WrkError."""
    load = Wrk(path, port, seconds, connections, close=close).start()
    try:
        return load.result()
    finally:
        load.stop()
