"""Closing an unpaid order: at its pay-by time (expiry, on the workers) or when its buyer
cancels it (the API). One implementation for both: the trade is closed at Alipay, asked about
once more, and the order canceled with its stock returned; a payment found on the way pays it
instead, so an order is never canceled with its money taken."""
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from infra.logs import log_ids
from payment import event_store, gateway
from payment.models import EventSource, EventState, PaymentAttempt
from payment.reconciliation.claims import reconciliation_checks_lease
from payment.reconciliation.found import FoundApplied, trades_found_apply
from shop.models import OrderInfo
from shop.services import order_stock_return

logger = logging.getLogger(__name__)

# What the outcome says of an order closed here (the others are the found payment's event
# states, "applied" first among them, or "settled": it was no longer unpaid).
CANCELED = "canceled"
SETTLED = "settled"


@dataclass(frozen=True)
class Closing:
    """Who closes an unpaid order, as its cancel event records it."""

    source: str  # a PaymentEvent source: expiry or the buyer's cancel
    reason: str  # the event's reason, which the buyer reads in the order's payment status


EXPIRED = Closing(EventSource.EXPIRY, "Not paid by its pay-by time: canceled.")
BUYER_CANCELED = Closing(EventSource.CANCEL, "Canceled by the buyer before paying.")


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
    outcome = order_unpaid_close(order_id=order_id, closing=EXPIRED)
    # Done: the claim ends. On an error it stays until its lease runs out, which keeps the
    # next run away while this task's own retries are under way.
    PaymentAttempt.objects.filter(order_id=order_id).update(claimed_until=None)
    return outcome


def order_unpaid_close(*, order_id: str, closing: Closing) -> FoundApplied:
    """Cancel an UNPAID order for `closing`, unless Alipay says it is paid: then it is paid.

    An order with a pay link has its trade closed at Alipay first (a trade Alipay never had
    is nothing to close), then the trade is asked about: a paid one is applied through the
    common idempotent path. Otherwise the order is canceled under its row lock, its stock
    returned and an event recorded. Outcome by order: "canceled", "settled" (not UNPAID any
    more), or the found payment's event state ("applied"). Raises gateway.GatewayUnavailable
    or gateway.GatewayRejected when Alipay cannot be asked: the order stays UNPAID.
    """
    order = OrderInfo.objects.get(order_id=order_id)
    if order.status != OrderInfo.Status.UNPAID:
        return FoundApplied({order_id: SETTLED}, [])
    if PaymentAttempt.objects.filter(order_id=order_id).exists():
        gateway.trade_close(out_trade_no=order_id)
        trade = gateway.trade_query(out_trade_no=order_id)
        if trade is not None and trade.is_paid:
            return trades_found_apply(trades=[(order_id, trade)])
    with transaction.atomic():
        order = OrderInfo.objects.select_for_update().get(order_id=order_id)
        if order.status != OrderInfo.Status.UNPAID:
            return FoundApplied({order_id: SETTLED}, [])
        now = timezone.now()
        OrderInfo.objects.filter(order_id=order_id, status=OrderInfo.Status.UNPAID).update(
            status=OrderInfo.Status.CANCELED, updated_at=now
        )
        order_stock_return(order=order)
        PaymentAttempt.objects.filter(order_id=order_id).update(next_check_at=None)
        event_store.event_insert(
            source=closing.source,
            params={"out_trade_no": order_id, "canceled_at": now.isoformat()},
            state=EventState.RECORDED, reason=closing.reason,
        )
    logger.info("order canceled order_id=%s by=%s", order_id, closing.source,
                extra=log_ids(order_id=order_id))
    return FoundApplied({order_id: CANCELED}, [])
