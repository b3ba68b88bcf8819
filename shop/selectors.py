"""Selectors of the shop domain: functions that read."""
from django.db.models import QuerySet

from shop.models import SKU, OrderInfo, User


def sku_list() -> QuerySet[SKU]:
    return SKU.objects.all()


def order_list(*, user: User) -> QuerySet[OrderInfo]:
    return OrderInfo.objects.filter(user=user).prefetch_related("goods__sku")


def order_get(*, user: User, order_id: str) -> OrderInfo | None:
    return order_list(user=user).filter(order_id=order_id).first()
