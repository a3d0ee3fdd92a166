"""``/hello?sleep=S``: the same answer as the Flask app; imports the code under upgrade."""

import os
import time

import benchcode
from django.http import HttpRequest, HttpResponse
from django.urls import path


def hello(request: HttpRequest) -> HttpResponse:
    try:
        seconds = float(request.GET.get("sleep", "0"))
    except ValueError:
        seconds = 0.0
    time.sleep(min(max(seconds, 0.0), 30.0))
    body = f"WORLD! ospid:{os.getpid()} version:{benchcode.VERSION}\n"
    return HttpResponse(body, content_type="text/plain; charset=utf-8")


urlpatterns = [path("hello", hello)]
