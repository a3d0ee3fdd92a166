import os

import corpusver
import probe
from django.http import HttpResponse, JsonResponse
from django.urls import path


def hello(request):
    return HttpResponse(f"WORLD! ospid:{os.getpid()} version:{corpusver.VERSION}\n")


def corpus(request):
    return JsonResponse(probe.report(corpusver.VERSION))


urlpatterns = [path("hello", hello), path("corpus", corpus)]
