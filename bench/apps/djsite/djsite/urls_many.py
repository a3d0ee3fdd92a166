"""The many-apps site's URLs: the admin and its docs, flat pages, a sitemap, a feed, ``/hello``."""

from django.contrib import admin
from django.contrib.flatpages.sitemaps import FlatPageSitemap
from django.contrib.sitemaps.views import sitemap
from django.contrib.syndication.views import Feed
from django.urls import include, path
from shop.models import Product
from shop.views import hello


class LatestProducts(Feed):
    title = "Products"
    link = "/products/"
    description = "The newest products."

    def items(self):
        return Product.objects.order_by("-created")[:10]

    def item_link(self, item):
        return f"/products/{item.pk}/"


urlpatterns = [
    path("admin/doc/", include("django.contrib.admindocs.urls")),
    path("admin/", admin.site.urls),
    path("pages/", include("django.contrib.flatpages.urls")),
    path("sitemap.xml", sitemap, {"sitemaps": {"flatpages": FlatPageSitemap}}),
    path("feed/", LatestProducts()),
    path("hello", hello),
]
