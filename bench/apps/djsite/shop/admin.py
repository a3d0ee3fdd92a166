from django.contrib import admin

from shop.models import Product

admin.site.register(Product)
