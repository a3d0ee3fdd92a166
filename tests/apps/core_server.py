"""A framework-free server for the core's end-to-end tests (stdlib http.server only).

Usage: python core_server.py ADDRESS [--ready S] [--drain S] [--interval S] [--pidfile P]
       [--max-draining N] [--no-warm]

The upgradable code is the module ``appcode`` found on ``sys.path`` (the tests write it into
the working directory): ``VERSION`` is served, and broken or hanging versions test rollback.
"""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, urlsplit

from grace_plugins.options import Options
from grace_plugins.runner import run_or_exit
from grace_plugins.tracked_server import TrackedHandlerMixin, TrackedServerMixin


class Server(TrackedServerMixin, ThreadingMixIn, HTTPServer):
    daemon_threads = True


def serve(context):
    sys.path.insert(0, os.getcwd())
    import appcode  # the code under upgrade

    class Handler(TrackedHandlerMixin, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            query = parse_qs(urlsplit(self.path).query)
            time.sleep(float(query.get("sleep", ["0"])[0]))
            if urlsplit(self.path).path == "/spawn":
                import subprocess

                out = subprocess.run(
                    [sys.executable, "-c", appcode.CHILD_PROBE],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    close_fds=False,
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
    if os.environ.get("GRACE_TEST_BLOCKING_LISTENER"):  # as TLS wrapping does to the listener
        server.socket.settimeout(None)
    context.ready()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    import argparse

    if os.path.exists("break-the-program"):  # tests: the program itself no longer starts
        sys.exit("core_server: broken on purpose (break-the-program exists)")
    if os.path.exists("slow-the-program") and os.environ.get("GRACE_PLUGINS_PREFLIGHT"):
        # tests: the new program takes this long to reach our entry point (a USR2 preflight)
        print(f"core_server: a slow start (pid {os.getpid()})", flush=True)
        time.sleep(float(open("slow-the-program").read()))  # noqa: SIM115

    if os.environ.get("GRACE_TEST_OPEN_FILE"):  # a supervisor-only fd that must not leak
        _held = open(os.environ.pop("GRACE_TEST_OPEN_FILE"), "w")  # noqa: SIM115
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--ready", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--pidfile")
    parser.add_argument("--max-draining", type=int, default=3)
    parser.add_argument("--no-warm", dest="warm", action="store_false")
    args = parser.parse_args()
    run_or_exit(
        serve,
        [args.address],
        Options(
            ready_timeout=args.ready,
            drain_timeout=args.drain,
            upgrade_interval=args.interval,
            pidfile=args.pidfile,
            max_draining=args.max_draining,
            warm=args.warm,
        ),
    )
