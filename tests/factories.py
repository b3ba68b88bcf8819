"""Rows the tests start from, made with the ORM."""
from decimal import Decimal

from shop.models import SKU


def sku_create(name: str = "Keyboard", price: str = "99.50", stock: int = 100) -> SKU:
    return SKU.objects.create(name=name, price=Decimal(price), stock=stock)
