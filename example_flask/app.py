"""The seed app: ``/hello?sleep=N`` answers ``WORLD! ospid:<pid> version:<VERSION>`` after N s.

Start it from the repository root with::

    flask --app example_flask/app.py hotrun --port 8080

then edit ``VERSION`` below and ``kill -HUP <pid>`` (the pid the banner prints): requests in
flight finish on the old process, new ones are answered by the new code at once.
"""

import os
import time

from flask import Flask, request

VERSION = "v1"

app = Flask(__name__)


@app.get("/hello")
def hello() -> tuple[str, int, dict[str, str]]:
    """Sleep ``?sleep=N`` seconds (at most 3600), then say which process and code answered."""
    time.sleep(min(max(request.args.get("sleep", 0.0, type=float), 0.0), 3600.0))
    body = f"WORLD! ospid:{os.getpid()} version:{VERSION}\n"
    return body, 200, {"Content-Type": "text/plain; charset=utf-8"}
