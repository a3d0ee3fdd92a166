"""The benchmark's Flask app: ``/hello?sleep=S`` says which process and which code answered.

``benchcode`` is the code under upgrade (written by ``bench/run.py``; its import may sleep, to
model an app that is slow to import).
"""

import os
import time

import benchcode
from flask import Flask, request

app = Flask(__name__)


@app.get("/hello")
def hello() -> tuple[str, int, dict[str, str]]:
    time.sleep(min(max(request.args.get("sleep", 0.0, type=float), 0.0), 30.0))
    body = f"WORLD! ospid:{os.getpid()} version:{benchcode.VERSION}\n"
    return body, 200, {"Content-Type": "text/plain; charset=utf-8"}
