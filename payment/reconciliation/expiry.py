"""Expiry: an order unpaid for ORDER_PAY_TIMEOUT_SECONDS is closed at Alipay, asked about once
more, and canceled with its stock returned; a payment found on the way pays it instead."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from infra.logs import log_ids
from payment import event_store, gateway
from payment.models import EventState, PaymentAttempt, PaymentEvent
from payment.reconciliation.claims import reconciliation_checks_lease
from payment.reconciliation.found import FoundApplied, trades_found_apply
from shop.models import OrderInfo
from shop.services import order_stock_return

logger = logging.getLogger(__name__)


def orders_expired(*, limit: int) -> list[str]:
    """UNPAID orders past ORDER_PAY_TIMEOUT_SECONDS, claimed like reconciliation's checks.

    An order with a pay link is leased through its attempt, so that overlapping runs (and
    reconciliation) never work on it at once; one without a link has no trade to close and
    is canceled by one conditional update, which is safe to repeat.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS)
    claimed, _ = reconciliation_checks_lease(
        Q(order__created_at__lt=cutoff), "order__created_at", limit=limit, now=now
    )
    never_linked = list(
        OrderInfo.objects.filter(status=OrderInfo.Status.UNPAID, created_at__lt=cutoff,
                                 payment_attempt__isnull=True)
        .order_by("created_at").values_list("order_id", flat=True)[:limit]
    )
    return claimed + never_linked


def order_expire(*, order_id: str) -> FoundApplied:
    """Close the trade, ask once more, then cancel and return the stock; never a paid order.

    Raises gateway.GatewayUnavailable when Alipay cannot be asked: the order stays UNPAID.
    """
    outcome = _order_expire(order_id)
    # Done: the claim ends. On an error it stays until its lease runs out, which keeps the
    # next run away while this task's own retries are under way.
    PaymentAttempt.objects.filter(order_id=order_id).update(claimed_until=None)
    return outcome


def _order_expire(order_id: str) -> FoundApplied:
    order = OrderInfo.objects.get(order_id=order_id)
    if order.status != OrderInfo.Status.UNPAID:
        return FoundApplied({order_id: "settled"}, [])
    if PaymentAttempt.objects.filter(order_id=order_id).exists():
        gateway.trade_close(out_trade_no=order_id)
        trade = gateway.trade_query(out_trade_no=order_id)
        if trade is not None and trade.is_paid:
            return trades_found_apply(trades=[(order_id, trade)])
    with transaction.atomic():
        order = OrderInfo.objects.select_for_update().get(order_id=order_id)
        if order.status != OrderInfo.Status.UNPAID:
            return FoundApplied({order_id: "settled"}, [])
        OrderInfo.objects.filter(order_id=order_id, status=OrderInfo.Status.UNPAID).update(
            status=OrderInfo.Status.CANCELED, updated_at=timezone.now()
        )
        order_stock_return(order=order)
        PaymentAttempt.objects.filter(order_id=order_id).update(next_check_at=None)
        event_store.event_insert(
            source=PaymentEvent.Source.EXPIRY,
            params={"out_trade_no": order_id, "canceled_at": timezone.now().isoformat()},
            state=EventState.RECORDED, reason="unpaid past ORDER_PAY_TIMEOUT_SECONDS: canceled",
        )
    logger.info("order expired and canceled order_id=%s", order_id,
                extra=log_ids(order_id=order_id))
    return FoundApplied({order_id: "canceled"}, [])
