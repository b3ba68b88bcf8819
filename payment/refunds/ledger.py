"""The refund ledger on the workers: send, confirm, settle; and what Alipay says of refunds.

A `Refund` row, with its `out_request_no`, exists before Alipay hears of it: operators and
staff ask through `payment.refunds.requests.refund_request`; a payment its order could no
longer take gets one from `late_payment_refunds_create`, in the payment's own transaction.
A worker then moves it on one step per run of `refund_process`:

    requested --alipay.trade.refund--> sent (accepted) | unknown (no usable answer) | failed
    sent, unknown --fastpay.refund.query, REFUND_CONFIRM_DELAY_SECONDS later--> succeeded
                  | requested (Alipay has no such refund: send it again, same number)

Every send carries the row's one `out_request_no`, which Alipay treats as the same refund,
so an answer lost on the way never makes a second refund. A refund whose fate is unknown is
never given up on: it is asked about again, at most the retry policy's longest delay apart.
Alipay's notifications about refunds settle rows too (payment/refunds/notifications.py).
"""
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum
from django.utils import timezone

from infra.logs import log_ids
from payment import gateway, metrics
from payment.models import Payment, Refund, RefundSource, RefundState
from payment.processing.retry import RetryPolicy, retry_policy
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


LATE_PAYMENT_REASON = "The order was closed before this payment arrived."
# Alipay's refusals that may pass (the merchant's balance topped up): sent again later.
RETRY_LATER_SUB_CODES = frozenset({"ACQ.SELLER_BALANCE_NOT_ENOUGH"})
# A wake-up delivered a moment before the refund's time still finds it due.
CLAIM_TOLERANCE = timedelta(seconds=1)
# Orders that hold a payment which paid them; a full refund moves them to REFUNDED.
PAID_ORDER_STATUSES = (OrderInfo.Status.UNSEND, OrderInfo.Status.UNRECEIVED,
                       OrderInfo.Status.UNCOMMENT, OrderInfo.Status.FINISHED)


@dataclass(frozen=True)
class Step:
    """Where a refund stands after one run, and in how many seconds to run it again."""

    state: str
    next_in: float | None = None  # None: nothing more to do now (settled, or someone else's)


def refund_lease(policy: RetryPolicy) -> timedelta:
    """How long a claimed refund is left to its worker: past its gateway call's time-out."""
    return timedelta(seconds=policy.claim_lease + settings.ALIPAY_TIMEOUT_SECONDS)


def refund_confirm_delay() -> float:
    return float(settings.REFUND_CONFIRM_DELAY_SECONDS)


# -- the ledger's numbers and sums ------------------------------------------------------------

def request_numbers(order_ids: Iterable[str]) -> Callable[[str], str]:
    """A source of new `out_request_no`s for these orders: `<order_id>R<nn>`, in request order.

    Call it with the orders' rows locked, so that two requests cannot take the same number.
    """
    counts: dict[str, int] = dict(
        Refund.objects.filter(order_id__in=set(order_ids)).values("order_id")
        .annotate(n=Count("id")).values_list("order_id", "n")
    )

    def next_number(order_id: str) -> str:
        counts[order_id] = counts.get(order_id, 0) + 1
        return f"{order_id}R{counts[order_id]:02d}"

    return next_number


def refunds_committed(*, payment_id: int) -> Decimal:
    """What the payment's refunds that are not failed add up to: no longer refundable."""
    total = (Refund.objects.filter(payment_id=payment_id).exclude(state=RefundState.FAILED)
             .aggregate(total=Sum("amount"))["total"])
    return total or Decimal("0.00")


def _refunds_succeeded(payment_id: int) -> Decimal:
    total = (Refund.objects.filter(payment_id=payment_id, state=RefundState.SUCCEEDED)
             .aggregate(total=Sum("amount"))["total"])
    return total or Decimal("0.00")


# -- late payments ----------------------------------------------------------------------------

def late_payment_refunds_create(*, payments: list[Payment]) -> list[int]:
    """Ledger rows refunding whole payments their order could not take; their ids.

    In the caller's transaction, with the payments' orders locked.
    """
    if not payments:
        return []
    now = timezone.now()
    next_number = request_numbers(p.order_id for p in payments)
    refunds = []
    for payment in payments:
        payment.refund_request_no = payment.refund_request_no or next_number(payment.order_id)
        refunds.append(Refund(
            order_id=payment.order_id, payment=payment, amount=payment.amount,
            reason=LATE_PAYMENT_REASON, out_request_no=payment.refund_request_no,
            source=RefundSource.LATE_PAYMENT, next_attempt_at=now,
        ))
    Payment.objects.bulk_update(payments, ["refund_request_no"])
    created = Refund.objects.bulk_create(refunds)
    for refund in created:
        logger.info("refund requested order_id=%s out_request_no=%s amount=%s source=%s",
                    refund.order_id, refund.out_request_no, refund.amount, refund.source,
                    extra=refund_log_ids(refund))
    metrics.refund_entered(RefundState.REQUESTED, len(created))
    return [refund.pk for refund in created]


def refund_log_ids(refund: Refund) -> dict[str, object]:
    """`extra=` for a line about a refund (its payment is loaded with it)."""
    return log_ids(order_id=refund.order_id, trade_no=refund.payment.trade_id,
                   out_request_no=refund.out_request_no)


def late_payment_refund_ensure(*, payment_id: int) -> int | None:
    """The open refund of a payment waiting for one, made due now (created if it has none).

    None when the payment is not waiting for a refund. A refused one is followed by a new
    request with a new number.
    """
    with transaction.atomic():
        payment = Payment.objects.get(pk=payment_id)
        OrderInfo.objects.select_for_update().filter(order_id=payment.order_id).first()
        payment.refresh_from_db()
        if payment.status != Payment.Status.REFUND_PENDING:
            return None
        refund = (Refund.objects.filter(payment=payment, source=RefundSource.LATE_PAYMENT)
                  .exclude(state=RefundState.FAILED).first())
        if refund is None:
            return late_payment_refunds_create(payments=[payment])[0]
        if refund.state == RefundState.SUCCEEDED:
            _payment_refunded_check(payment, timezone.now())
            return None
        Refund.objects.filter(pk=refund.pk, state__in=Refund.OPEN_STATES).update(
            next_attempt_at=timezone.now(), updated_at=timezone.now())
        return refund.pk


# -- one step of a refund on a worker ---------------------------------------------------------

def refund_process(*, refund_id: int) -> Step:
    """Take a due refund one step on: send it, or confirm it. Safe to run at any time, twice."""
    policy = retry_policy()
    refund = _refund_claim(refund_id, policy)
    if refund is None:
        state = Refund.objects.filter(pk=refund_id).values_list("state", flat=True).first()
        return Step(str(state or "missing"))
    if refund.state == RefundState.REQUESTED:
        return _refund_send(refund, policy)
    return _refund_confirm(refund, policy)


def _refund_claim(refund_id: int, policy: RetryPolicy) -> Refund | None:
    """Lease a due open refund to this worker (counting the call it is about to make)."""
    now = timezone.now()
    with transaction.atomic():
        refund = (
            Refund.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("order", "payment")
            .filter(pk=refund_id, state__in=Refund.OPEN_STATES)
            .filter(Q(next_attempt_at__isnull=True)
                    | Q(next_attempt_at__lte=now + CLAIM_TOLERANCE))
            .first()
        )
        if refund is None:
            return None
        sending = refund.state == RefundState.REQUESTED
        changes: dict[str, object] = {"next_attempt_at": now + refund_lease(policy),
                                      "updated_at": now}
        if sending:
            changes["attempts"] = F("attempts") + 1
            changes["sent_at"] = refund.sent_at or now
            refund.attempts += 1
            if refund.source == RefundSource.LATE_PAYMENT:
                Payment.objects.filter(pk=refund.payment_id).update(refund_tried_at=now)
        else:
            changes["queries"] = F("queries") + 1
            refund.queries += 1
        Refund.objects.filter(pk=refund.pk).update(**changes)
    return refund


def _refund_send(refund: Refund, policy: RetryPolicy) -> Step:
    try:
        gateway.trade_refund(
            out_trade_no=refund.order_id, refund_amount=refund.amount,
            out_request_no=refund.out_request_no, reason=refund.reason,
        )
    except gateway.GatewayUnavailable as exc:
        # Alipay may have made it all the same: ask before anything is sent again.
        delay = max(refund_confirm_delay(), policy.delay(refund.attempts))
        return _refund_reschedule(refund, RefundState.UNKNOWN, delay, f"refund: {exc}")
    except gateway.GatewayRejected as exc:
        if exc.sub_code in RETRY_LATER_SUB_CODES:
            return _refund_reschedule(refund, RefundState.REQUESTED, policy.delay(refund.attempts),
                                      f"refund: {exc}")
        refund_fail(refund=refund, sub_code=exc.sub_code or exc.code, error=str(exc))
        return Step(RefundState.FAILED)
    delay = max(refund_confirm_delay(), policy.delay(refund.attempts))
    return _refund_reschedule(refund, RefundState.SENT, delay, "")


def _refund_confirm(refund: Refund, policy: RetryPolicy) -> Step:
    try:
        answer = gateway.trade_refund_query(out_trade_no=refund.order_id,
                                           out_request_no=refund.out_request_no)
    except gateway.GatewayRejected as exc:
        if not exc.sub_code.endswith("TRADE_NOT_EXIST"):
            return _refund_reschedule(refund, refund.state, policy.delay(refund.queries),
                                      f"refund query: {exc}")
        answer = None  # no trade, so no refund: sending it again gets Alipay's refusal
    except gateway.GatewayUnavailable as exc:
        return _refund_reschedule(refund, refund.state, policy.delay(refund.queries),
                                  f"refund query: {exc}")
    if answer is not None and answer.succeeded(refund.amount):
        refund_succeed(refund_id=refund.pk, confirmed_by="query")
        return Step(RefundState.SUCCEEDED)
    if answer is not None and answer.found:
        # Alipay has this request, not (yet) refunded for our amount: ask again later.
        error = (f"refund query: status {answer.refund_status or '-'}, "
                 f"amount {answer.refund_amount}")
        if answer.refund_amount not in (None, refund.amount):
            logger.error("refund amount differs at Alipay order_id=%s out_request_no=%s "
                         "ours=%s alipay=%s", refund.order_id, refund.out_request_no,
                         refund.amount, answer.refund_amount, extra=refund_log_ids(refund))
        return _refund_reschedule(refund, refund.state, policy.delay(refund.queries), error)
    # Alipay has no refund of this number: send it again, with the same number.
    return _refund_reschedule(refund, RefundState.REQUESTED, 0.0,
                              f"refund query: Alipay has no refund {refund.out_request_no}")


def _refund_reschedule(refund: Refund, state: str, delay: float, error: str) -> Step:
    """Leave an open refund in `state`, due again in `delay` seconds (unless settled since)."""
    now = timezone.now()
    updated = Refund.objects.filter(pk=refund.pk, state__in=Refund.OPEN_STATES).update(
        state=state, next_attempt_at=now + timedelta(seconds=delay), last_error=error[:1000],
        updated_at=now,
    )
    if not updated:  # a notification settled it meanwhile
        return Step(str(Refund.objects.filter(pk=refund.pk).values_list("state", flat=True)
                        .first()))
    if state != refund.state:
        metrics.refund_entered(state)
    if error:
        logger.warning("refund %s order_id=%s out_request_no=%s attempts=%s queries=%s: %s",
                       state, refund.order_id, refund.out_request_no, refund.attempts,
                       refund.queries, error[:200], extra=refund_log_ids(refund))
    else:
        logger.info("refund %s order_id=%s out_request_no=%s amount=%s", state,
                    refund.order_id, refund.out_request_no, refund.amount,
                    extra=refund_log_ids(refund))
    return Step(state, delay)


# -- settling ---------------------------------------------------------------------------------

def refund_succeed(*, refund_id: int, confirmed_by: str) -> bool:
    """Alipay confirmed the refund: record it, and settle the payment or order it completes."""
    with transaction.atomic():
        order_id = Refund.objects.values_list("order_id", flat=True).get(pk=refund_id)
        # The order's lock serialises its refunds' totals (see refund_request).
        OrderInfo.objects.select_for_update().filter(order_id=order_id).first()
        refund = Refund.objects.select_related("payment").get(pk=refund_id)
        return refund_mark_succeeded(refund, confirmed_by, timezone.now())


def refund_mark_succeeded(refund: Refund, confirmed_by: str, now: datetime) -> bool:
    """`refund_succeed` in the caller's transaction, which holds the refund's order's lock."""
    updated = Refund.objects.filter(pk=refund.pk).exclude(state=RefundState.SUCCEEDED).update(
        state=RefundState.SUCCEEDED, succeeded_at=now, confirmed_by=confirmed_by, last_error="",
        next_attempt_at=None, updated_at=now,
    )
    if not updated:
        return False
    metrics.refund_entered(RefundState.SUCCEEDED)
    if refund.state == RefundState.FAILED:
        logger.warning("refund recorded as refused was made by Alipay order_id=%s "
                       "out_request_no=%s sub_code=%s", refund.order_id, refund.out_request_no,
                       refund.sub_code, extra=refund_log_ids(refund))
    logger.info("refund succeeded order_id=%s out_request_no=%s amount=%s confirmed_by=%s",
                refund.order_id, refund.out_request_no, refund.amount, confirmed_by,
                extra=refund_log_ids(refund))
    _payment_refunded_check(refund.payment, now)
    return True


def _payment_refunded_check(payment: Payment, now: datetime) -> None:
    """A payment refunded in full: a late one is REFUNDED, the order it paid is REFUNDED."""
    if _refunds_succeeded(payment.pk) < payment.amount:
        return
    Payment.objects.filter(pk=payment.pk, refunded_at__isnull=True).update(refunded_at=now)
    if payment.status == Payment.Status.REFUND_PENDING:
        Payment.objects.filter(pk=payment.pk, status=Payment.Status.REFUND_PENDING).update(
            status=Payment.Status.REFUNDED)
        logger.info("late payment refunded order_id=%s trade_no=%s", payment.order_id,
                    payment.trade_id, extra=log_ids(order_id=payment.order_id,
                                                    trade_no=payment.trade_id,
                                                    event_id=payment.event_id))
    elif payment.status == Payment.Status.APPLIED:
        moved = OrderInfo.objects.filter(
            order_id=payment.order_id, status__in=PAID_ORDER_STATUSES
        ).update(status=OrderInfo.Status.REFUNDED, updated_at=now)
        if moved:
            logger.info("order refunded in full order_id=%s trade_no=%s amount=%s",
                        payment.order_id, payment.trade_id, payment.amount,
                        extra=log_ids(order_id=payment.order_id, trade_no=payment.trade_id,
                                      event_id=payment.event_id))


def refund_fail(*, refund: Refund, sub_code: str, error: str) -> bool:
    """Alipay refused the refund: no money moved, and its amount is refundable again."""
    now = timezone.now()
    updated = Refund.objects.filter(pk=refund.pk, state__in=Refund.OPEN_STATES).update(
        state=RefundState.FAILED, sub_code=sub_code[:64], last_error=error[:1000], failed_at=now,
        next_attempt_at=None, updated_at=now,
    )
    if updated:
        metrics.refund_entered(RefundState.FAILED)
        logger.warning("refund refused by Alipay order_id=%s out_request_no=%s amount=%s "
                       "sub_code=%s", refund.order_id, refund.out_request_no, refund.amount,
                       sub_code, extra=refund_log_ids(refund))
    return bool(updated)


# -- the sweeper's part -----------------------------------------------------------------------

def refunds_due(*, limit: int) -> list[int]:
    """Open refunds whose wake-up went missing, and late payments without a refund yet (one is
    created now: payments stored before the ledger, or by hand)."""
    policy = retry_policy()
    now = timezone.now()
    stale = now - timedelta(seconds=policy.claim_lease)
    due = list(
        Refund.objects.filter(state__in=Refund.OPEN_STATES)
        .filter(Q(next_attempt_at__lt=stale) | Q(next_attempt_at__isnull=True))
        .order_by("next_attempt_at").values_list("pk", flat=True)[:limit]
    )
    # A late payment whose refund Alipay refused waits for an operator, not for the sweeper.
    orphans = list(
        Payment.objects.filter(status=Payment.Status.REFUND_PENDING, created_at__lt=stale)
        .filter(~Exists(Refund.objects.filter(payment=OuterRef("pk"),
                                              source=RefundSource.LATE_PAYMENT)))
        .values_list("pk", flat=True)[:limit]
    )
    for payment_id in orphans:
        refund_id = late_payment_refund_ensure(payment_id=payment_id)
        if refund_id is not None:
            due.append(refund_id)
    return due
