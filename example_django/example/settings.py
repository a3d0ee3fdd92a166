"""Settings of the example project: no database, so no migrations to apply.

``EXAMPLE_DEBUG=0`` in the environment turns DEBUG off (static files are then served only with
``runhot --insecure``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-do-not-use-in-production"
DEBUG = os.environ.get("EXAMPLE_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "grace_plugins.django",
    "example",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
    }
]
DATABASES = {}

STATIC_URL = "static/"
USE_TZ = True

# EXAMPLE_LOG_REQUESTS=0 silences the per-request log lines (load tests make thousands).
if os.environ.get("EXAMPLE_LOG_REQUESTS", "1") == "0":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {"django.server": {"level": "WARNING"}},
    }
