"""Settings for the in-process Django tests in tests/e2e/test_django_in_process.py (applied
there with ``settings.configure``, never through ``DJANGO_SETTINGS_MODULE``), and their
URLconf."""

import os

from django.http import HttpResponse
from django.urls import path

SECRET_KEY = "tests-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.staticfiles", "grace_plugins.django"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "tests.django_settings"
WSGI_APPLICATION = None
DATABASES = {}
STATIC_URL = "static/"
USE_TZ = True
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": []}]


def hello(request):
    return HttpResponse(f"ospid:{os.getpid()}", content_type="text/plain")


urlpatterns = [path("hello", hello)]
