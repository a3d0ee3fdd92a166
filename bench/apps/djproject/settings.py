"""Minimal settings: no database, one URL; ``grace_plugins.django`` only with BENCH_GRACE=1."""

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["grace_plugins.django"] if os.environ.get("BENCH_GRACE") == "1" else []
# CommonMiddleware sets Content-Length, as in any real project: without it every answer ends
# by closing the connection (no keep-alive), and wrk counts each such end as a read error.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "djproject.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.server": {"level": "WARNING"}},
}
