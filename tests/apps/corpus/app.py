"""The corpus as a Flask app: ``/hello`` (which process and code answered) and ``/corpus``."""

import os

import corpusver
import probe
from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/hello")
def hello():
    return f"WORLD! ospid:{os.getpid()} version:{corpusver.VERSION}\n"


@app.get("/corpus")
def corpus():
    return jsonify(probe.report(corpusver.VERSION))
