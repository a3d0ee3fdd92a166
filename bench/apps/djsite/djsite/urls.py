"""The benchmark site's URLs: the admin, and ``/hello`` as in the other benchmark apps."""

from django.contrib import admin
from django.urls import path
from shop.views import hello

urlpatterns = [
    path("admin/", admin.site.urls),
    path("hello", hello),
]
