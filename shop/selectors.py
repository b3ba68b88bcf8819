"""Selectors of the shop domain: functions that read."""
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet

from shop.models import SKU, OrderInfo, User


def sku_list() -> QuerySet[SKU]:
    return SKU.objects.all()


def order_list(*, user: User) -> QuerySet[OrderInfo]:
    return OrderInfo.objects.filter(user=user).prefetch_related("goods__sku")


def order_get(*, user: User, order_id: str) -> OrderInfo | None:
    return order_list(user=user).filter(order_id=order_id).first()


def order_pay_deadline(order: OrderInfo) -> datetime:
    """When the order stops being payable: ORDER_PAY_TIMEOUT_SECONDS after it was placed.

    Its pay link carries it as Alipay's `time_expire` (payment/links.py), so a link kept open
    past it cannot be paid at Alipay either.
    """
    return order.created_at + timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS)
