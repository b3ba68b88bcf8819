"""Pay links: the signed Alipay URL for an order, for the cashier that fits the buyer's device
(the desktop cashier, or the mobile one that opens the Alipay app on a phone), and the pay link
record reconciliation works from."""
import logging
import re
from datetime import timedelta
from urllib.parse import urljoin

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from infra.logs import log_ids
from payment import gateway
from payment.errors import PaymentError
from payment.models import PayChannel, PaymentAttempt
from shop.models import OrderInfo, User
from shop.selectors import order_pay_deadline

logger = logging.getLogger(__name__)


# Phones and tablets, as their browsers name themselves (iPadOS asks for desktop pages and says
# Macintosh: it gets the desktop cashier, which it shows well).
MOBILE_USER_AGENT = re.compile(
    r"Mobi|Android|iPhone|iPad|iPod|Windows Phone|HarmonyOS|OpenHarmony|Tablet|Silk/", re.I)


def channel_for_device(*, user_agent: str, ua_mobile_hint: str = "") -> PayChannel:
    """The cashier for the buyer's device: `wap` for a phone or tablet (its user agent, or the
    `Sec-CH-UA-Mobile: ?1` client hint), `page` otherwise."""
    if ua_mobile_hint.strip() == "?1" or MOBILE_USER_AGENT.search(user_agent or ""):
        return PayChannel.WAP
    return PayChannel.PAGE


def order_page_url(order_id: str) -> str:
    """The buyer's page of the order, on the shop the return URL points at: where the mobile
    cashier's back button goes."""
    return urljoin(settings.ALIPAY_RETURN_URL, f"/my/orders/{order_id}/")


def payment_link_create(*, user: User, order_id: str,
                        channel: PayChannel = PayChannel.PAGE) -> str:
    """The signed Alipay URL for the user's unpaid order, for the cashier `channel`; records
    the pay link (and its channel)."""
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
    subject = f"{settings.ALIPAY_SUBJECT_PREFIX}{order.order_id}"
    if channel == PayChannel.WAP:
        url = gateway.wap_pay_url(out_trade_no=order.order_id, total_amount=order.total_amount,
                                  subject=subject, time_expire=deadline,
                                  quit_url=order_page_url(order.order_id))
    else:
        url = gateway.page_pay_url(out_trade_no=order.order_id, total_amount=order.total_amount,
                                   subject=subject, time_expire=deadline)
    attempt, created = PaymentAttempt.objects.get_or_create(
        order=order,
        defaults={
            "amount": order.total_amount,
            "started_at": now,
            "last_started_at": now,
            "next_check_at": now + timedelta(seconds=settings.RECONCILE_AFTER_SECONDS),
            "channel": channel,
        },
    )
    if not created:
        PaymentAttempt.objects.filter(pk=attempt.pk).update(
            last_started_at=now, links_issued=F("links_issued") + 1, channel=channel
        )
    logger.info("payment link issued order_id=%s amount=%s channel=%s", order.order_id,
                order.total_amount, channel, extra=log_ids(order_id=order.order_id))
    return url
