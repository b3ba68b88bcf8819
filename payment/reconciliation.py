"""Services that find payments nobody told us about, and settle orders nobody paid.

- the sweeper re-sends stored events that never reached a worker, and marks them dead after
  too many attempts;
- reconciliation asks `alipay.trade.query` about UNPAID orders whose pay link is older than
  RECONCILE_AFTER, in claimed batches, concurrently;
- expiry closes the Alipay trade of an order unpaid for ORDER_PAY_TIMEOUT, asks once more,
  and cancels the order with its stock returned.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from payment import alipay
from payment.models import Payment, PaymentAttempt, PaymentEvent
from payment.services import (
    event_enqueue,
    event_process,
    event_record,
    payment_refund_enqueue,
)
from shop.models import OrderInfo
from shop.services import order_stock_return

logger = logging.getLogger(__name__)

Source = PaymentEvent.Source
State = PaymentEvent.State
CLAIM_LEASE = timedelta(minutes=5)
MAX_CHECK_GAP = timedelta(minutes=10)


def events_sweep(*, limit: int = 1000) -> dict[str, int]:
    """Send again what is stuck in `received`; give up on it past the attempt limit."""
    now = timezone.now()
    stale = now - settings.PAYMENT_SWEEP_AFTER
    dead = PaymentEvent.objects.filter(
        state=State.RECEIVED, updated_at__lt=stale,
        attempts__gte=settings.PAYMENT_EVENT_MAX_ATTEMPTS,
    ).update(state=State.DEAD, processed_at=now, reason="gave up: too many attempts")
    if dead:
        logger.error("payment events marked dead count=%s", dead)
    with transaction.atomic():
        ids = list(
            PaymentEvent.objects.select_for_update(skip_locked=True)
            .filter(state=State.RECEIVED, updated_at__lt=stale)
            .order_by("updated_at").values_list("pk", flat=True)[:limit]
        )
        # Touching updated_at keeps the next sweep from sending them again at once.
        PaymentEvent.objects.filter(pk__in=ids).update(updated_at=now)
        for event_id in ids:
            event_enqueue(event_id=event_id)
    refunds = list(
        Payment.objects.filter(status=Payment.Status.REFUND_PENDING)
        .filter(Q(refund_tried_at__lt=stale)
                | Q(refund_tried_at__isnull=True, created_at__lt=stale))
        .values_list("pk", flat=True)[:limit]
    )
    for payment_id in refunds:
        payment_refund_enqueue(payment_id=payment_id)
    if ids or refunds:
        logger.info("sweep re-sent events=%s refunds=%s", len(ids), len(refunds))
    return {"resent": len(ids), "dead": dead, "refunds": len(refunds)}


def attempts_claim(*, limit: int) -> list[str]:
    """Claim due reconciliation checks. Overlapping runs never claim the same order."""
    return attempts_claim_with_token(limit=limit)[0]


def attempts_claim_with_token(*, limit: int) -> tuple[list[str], datetime]:
    """Claim due checks; the token (the lease's end) lets the batch prove it still holds them."""
    now = timezone.now()
    return _attempts_lease(Q(next_check_at__lte=now), "next_check_at", limit=limit, now=now)


def _attempts_lease(
    due: Q, order_by: str, *, limit: int, now: datetime
) -> tuple[list[str], datetime]:
    """Lease the UNPAID orders' attempts that match `due` and no one holds (row locks skipped)."""
    token = now + CLAIM_LEASE
    with transaction.atomic():
        order_ids = list(
            PaymentAttempt.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(due, order__status=OrderInfo.Status.UNPAID)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by(order_by).values_list("order_id", flat=True)[:limit]
        )
        PaymentAttempt.objects.filter(order_id__in=order_ids).update(claimed_until=token)
    return order_ids, token


def attempts_hold(*, order_ids: list[str], token: datetime) -> list[str]:
    """The claimed orders this batch still holds, with their lease renewed.

    A batch that waited in the queue past its lease may have been claimed again by a later
    run; it then leaves those orders to that run instead of checking them twice.
    """
    with transaction.atomic():
        held = list(
            PaymentAttempt.objects.select_for_update(skip_locked=True)
            .filter(order_id__in=order_ids, claimed_until=token)
            .values_list("order_id", flat=True)
        )
        PaymentAttempt.objects.filter(order_id__in=held).update(
            claimed_until=timezone.now() + CLAIM_LEASE
        )
    return held


def order_reconcile(*, order_id: str) -> str:
    """Ask Alipay about one order and apply a payment it reports. Returns the outcome."""
    counts = orders_reconcile(order_ids=[order_id], concurrency=1)
    return next(iter(counts), "no pay link issued")


def orders_reconcile(*, order_ids: list[str], concurrency: int) -> dict[str, int]:
    """Check a claimed batch with at most `concurrency` trade queries in flight.

    Only the queries run on the pool's threads; every database step stays on this thread,
    so a batch holds one database connection however many queries are in flight.
    """
    attempts = list(PaymentAttempt.objects.select_related("order").filter(order_id__in=order_ids))
    counts: dict[str, int] = {}
    unpaid = [a for a in attempts if a.order.status == OrderInfo.Status.UNPAID]
    settled = [a.order_id for a in attempts if a.order.status != OrderInfo.Status.UNPAID]
    if settled:
        _checks_done({order_id: ("settled", None) for order_id in settled})
        counts["settled"] = len(settled)
    with ThreadPoolExecutor(max(1, min(concurrency, len(unpaid) or 1))) as pool:
        answers = list(pool.map(_trade_ask, [a.order_id for a in unpaid]))
    now = timezone.now()
    done: dict[str, tuple[str, datetime | None]] = {}
    for attempt, answer in zip(unpaid, answers, strict=True):
        if isinstance(answer, Exception):
            # Retried by a later run, sooner than an unpaid order would be.
            outcome = "error"
            done[attempt.order_id] = (f"error: {answer}"[:100],
                                      now + _check_gap(attempt.checks, base=0.5))
        elif answer is not None and answer.is_paid:
            outcome = trade_status_apply(order_id=attempt.order_id, trade=answer)
            done[attempt.order_id] = (outcome, None)
        else:
            outcome = "unpaid"
            status = answer.trade_status if answer else "TRADE_NOT_EXIST"
            done[attempt.order_id] = (status, now + _check_gap(attempt.checks, base=1.0))
        counts[outcome] = counts.get(outcome, 0) + 1
    _checks_done(done)
    logger.info("reconciled batch size=%s outcomes=%s", len(order_ids), counts)
    return counts


def _trade_ask(order_id: str) -> alipay.TradeStatus | None | Exception:
    try:
        return alipay.trade_query(out_trade_no=order_id)
    except (alipay.GatewayUnavailable, alipay.GatewayRejected) as exc:
        logger.warning("reconcile query failed order_id=%s error=%s", order_id, exc)
        return exc


def trade_status_apply(*, order_id: str, trade: alipay.TradeStatus) -> str:
    """Record a paid trade the query found, and apply it through the common path."""
    params = {k: str(v) for k, v in trade.raw.items() if not isinstance(v, list | dict)}
    params.setdefault("out_trade_no", order_id)
    event, _ = event_record(source=Source.QUERY, params=params, enqueue=False)
    try:
        event = event_process(event_id=event.pk)
    except Exception as exc:  # noqa: BLE001  (stored; the sweeper takes it up again)
        logger.warning("query event id=%s left for the sweeper: %s", event.pk, exc)
        return "stored"
    return str(event.state)


def _check_gap(checks: int, *, base: float) -> timedelta:
    gap = timedelta(seconds=settings.RECONCILE_INTERVAL * base * (checks + 1))
    return min(gap, MAX_CHECK_GAP)


def _checks_done(results: dict[str, tuple[str, datetime | None]]) -> None:
    """Record each check's result and next time, and release the claims, in one commit."""
    now = timezone.now()
    with transaction.atomic():
        for order_id, (result, next_check_at) in results.items():
            PaymentAttempt.objects.filter(order_id=order_id).update(
                checks=F("checks") + 1, last_checked_at=now, last_check_result=result[:100],
                next_check_at=next_check_at, claimed_until=None,
            )


def orders_expired(*, limit: int) -> list[str]:
    """UNPAID orders past ORDER_PAY_TIMEOUT, claimed like reconciliation's checks.

    An order with a pay link is leased through its attempt, so that overlapping runs (and
    reconciliation) never work on it at once; one without a link has no trade to close and
    is canceled by one conditional update, which is safe to repeat.
    """
    now = timezone.now()
    cutoff = now - settings.ORDER_PAY_TIMEOUT
    claimed, _ = _attempts_lease(
        Q(order__created_at__lt=cutoff), "order__created_at", limit=limit, now=now
    )
    never_linked = list(
        OrderInfo.objects.filter(status=OrderInfo.Status.UNPAID, created_at__lt=cutoff,
                                 payment_attempt__isnull=True)
        .order_by("created_at").values_list("order_id", flat=True)[:limit]
    )
    return claimed + never_linked


def order_expire(*, order_id: str) -> str:
    """Close the trade, ask once more, then cancel and return the stock; never a paid order.

    Raises alipay.GatewayUnavailable when Alipay cannot be asked: the order stays UNPAID.
    """
    outcome = _order_expire(order_id)
    # Done: the claim ends. On an error it stays until its lease runs out, which keeps the
    # next run away while this task's own retries are under way.
    PaymentAttempt.objects.filter(order_id=order_id).update(claimed_until=None)
    return outcome


def _order_expire(order_id: str) -> str:
    order = OrderInfo.objects.get(order_id=order_id)
    if order.status != OrderInfo.Status.UNPAID:
        return "settled"
    if PaymentAttempt.objects.filter(order_id=order_id).exists():
        alipay.trade_close(out_trade_no=order_id)
        trade = alipay.trade_query(out_trade_no=order_id)
        if trade is not None and trade.is_paid:
            return trade_status_apply(order_id=order_id, trade=trade)
    with transaction.atomic():
        order = OrderInfo.objects.select_for_update().get(order_id=order_id)
        if order.status != OrderInfo.Status.UNPAID:
            return "settled"
        OrderInfo.objects.filter(order_id=order_id, status=OrderInfo.Status.UNPAID).update(
            status=OrderInfo.Status.CANCELED, updated_at=timezone.now()
        )
        order_stock_return(order=order)
        PaymentAttempt.objects.filter(order_id=order_id).update(next_check_at=None)
        event_record(
            source=Source.EXPIRY,
            params={"out_trade_no": order_id, "canceled_at": timezone.now().isoformat()},
            state=State.RECORDED, reason="unpaid past ORDER_PAY_TIMEOUT: canceled",
            enqueue=False,
        )
    logger.info("order expired and canceled order_id=%s", order_id)
    return "canceled"
