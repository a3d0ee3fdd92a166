"""WSGI app for the gunicorn adapter's tests: ``gunicorn_app:app``.

The upgradable code is the module ``appcode`` in gunicorn's ``--chdir`` directory (the tests
write it): ``VERSION`` is served, and broken or hanging versions test rollback. ``?sleep=S``
makes a slow request; ``?env=NAME`` shows a variable the app inherited. If ``appcode`` defines
``status(environ)``, its answer (or its exception) is the status of every request: code that
imports fine and fails at request time, for the ready check.
"""

import os
import time
from urllib.parse import parse_qs

import appcode  # the code under upgrade


def app(environ, start_response):
    decide = getattr(appcode, "status", None)
    status = decide(environ) if decide is not None else "200 OK"
    if not status.startswith("200"):
        body = f"{status} ospid:{os.getpid()} version:{appcode.VERSION}\n".encode()
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    time.sleep(float(query.get("sleep", ["0"])[0]))
    body = f"WORLD! ospid:{os.getpid()} version:{appcode.VERSION}\n".encode()
    for name in query.get("env", []):  # what the app inherited
        body += f"env:{name}={os.environ.get(name, '-')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
