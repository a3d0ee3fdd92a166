"""A framework-free server for the core's end-to-end tests (stdlib http.server only).

Usage: python core_server.py ADDRESS [ready_timeout drain_timeout]

The upgradable code is the module ``appcode`` found on ``sys.path`` (the tests write it into
the working directory): ``VERSION`` is served, and broken or hanging versions test rollback.
"""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, urlsplit

from grace_plugins.runner import run_or_exit
from grace_plugins.supervisor import Options
from grace_plugins.tracked_server import TrackedHandlerMixin, TrackedServerMixin


class Server(TrackedServerMixin, ThreadingMixIn, HTTPServer):
    daemon_threads = True


def serve(context):
    sys.path.insert(0, os.getcwd())
    import appcode  # noqa: the code under upgrade

    class Handler(TrackedHandlerMixin, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            query = parse_qs(urlsplit(self.path).query)
            time.sleep(float(query.get("sleep", ["0"])[0]))
            if urlsplit(self.path).path == "/spawn":
                import subprocess

                out = subprocess.run(
                    [sys.executable, "-c", appcode.CHILD_PROBE],
                    capture_output=True, text=True, timeout=20, close_fds=False,
                ).stdout
                body = out.encode()
            else:
                body = f"WORLD! ospid:{os.getpid()} version:{appcode.VERSION}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = context.listeners[0]
    server.tracker = context.tracker
    context.on_stop(server.shutdown)
    context.ready()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    ready_timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    drain_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    pidfile = sys.argv[4] if len(sys.argv) > 4 else None
    run_or_exit(
        serve,
        [sys.argv[1]],
        Options(ready_timeout=ready_timeout, drain_timeout=drain_timeout, pidfile=pidfile),
    )
