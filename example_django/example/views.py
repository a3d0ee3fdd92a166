"""The seed scenario: /hello?sleep=N answers after N seconds, naming the process and the code
version, so a hot upgrade shows which code answered."""

import os
import time

from django.http import HttpResponse
from django.shortcuts import render

VERSION = "v1"


def hello(request):
    time.sleep(float(request.GET.get("sleep", "0")))
    body = f"WORLD! ospid:{os.getpid()} version:{VERSION}\n"
    return HttpResponse(body, content_type="text/plain")


def index(request):
    return render(request, "example/index.html", {"pid": os.getpid(), "version": VERSION})
