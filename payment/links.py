"""Pay links: the signed Alipay page-pay URL for an order, and the attempt it records."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from infra.logs import log_ids
from payment import gateway
from payment.errors import PaymentError
from payment.models import PaymentAttempt
from shop.models import OrderInfo, User
from shop.selectors import order_pay_deadline

logger = logging.getLogger(__name__)


def payment_link_create(*, user: User, order_id: str) -> str:
    """The signed Alipay page-pay URL for the user's unpaid order; records the attempt."""
    order = OrderInfo.objects.filter(
        order_id=order_id, user=user, status=OrderInfo.Status.UNPAID
    ).first()
    if order is None:
        # One message for missing, foreign and no-longer-unpaid orders, as in the seed.
        raise PaymentError("Order not found or not awaiting payment.")
    now = timezone.now()
    deadline = order_pay_deadline(order)
    if deadline <= now:
        # Expiry cancels it soon; until then it is no longer payable either.
        raise PaymentError("Order not found or not awaiting payment: its time to pay has "
                           "passed.")
    url = gateway.page_pay_url(
        out_trade_no=order.order_id,
        total_amount=order.total_amount,
        subject=f"{settings.ALIPAY_SUBJECT_PREFIX}{order.order_id}",
        time_expire=deadline,
    )
    attempt, created = PaymentAttempt.objects.get_or_create(
        order=order,
        defaults={
            "amount": order.total_amount,
            "started_at": now,
            "last_started_at": now,
            "next_check_at": now + timedelta(seconds=settings.RECONCILE_AFTER_SECONDS),
        },
    )
    if not created:
        PaymentAttempt.objects.filter(pk=attempt.pk).update(
            last_started_at=now, links_issued=F("links_issued") + 1
        )
    logger.info("payment link issued order_id=%s amount=%s", order.order_id, order.total_amount,
                extra=log_ids(order_id=order.order_id))
    return url
