import os
import time

from django.http import HttpResponse

from shop import version


def hello(request):
    """``/hello?sleep=S``: which process and which code answered (as the other bench apps)."""
    time.sleep(min(max(float(request.GET.get("sleep", 0) or 0), 0.0), 3600.0))
    body = f"WORLD! ospid:{os.getpid()} version:{version.VERSION}\n"
    return HttpResponse(body, content_type="text/plain; charset=utf-8")
