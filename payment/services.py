"""Services of the payment domain: record what arrived, verify it, apply it exactly once."""
import functools
import hashlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from payment import alipay
from payment.models import Payment, PaymentAttempt, PaymentEvent
from shop.models import OrderInfo, User

logger = logging.getLogger(__name__)

Source = PaymentEvent.Source
State = PaymentEvent.State

RETURN_METHODS = frozenset({"alipay.trade.page.pay.return", "alipay.trade.wap.pay.return"})
# A signed return whose trade Alipay does not (yet) report as paid is asked about this often
# before it is rejected; reconciliation keeps watching the order either way.
RETURN_CONFIRM_ATTEMPTS = 3
MAX_PARAMS = 64
MAX_VALUE_LENGTH = 4096


class PaymentError(Exception):
    """A request about a payment cannot be served; the message is fit for the buyer."""


class PaymentNotConfirmed(Exception):
    """Alipay does not report the trade as paid yet; ask again later."""


class EventRejected(Exception):
    """The event must never pay anything; the message is the reason kept on the event."""


@dataclass(frozen=True)
class CheckedEvent:
    order: OrderInfo
    trade_no: str
    amount: Decimal
    trade_status: str


def payment_link_create(*, user: User, order_id: str) -> str:
    """The signed Alipay page-pay URL for the user's unpaid order; records the attempt."""
    order = OrderInfo.objects.filter(
        order_id=order_id, user=user, status=OrderInfo.Status.UNPAID
    ).first()
    if order is None:
        # One message for missing, foreign and no-longer-unpaid orders, as in the seed.
        raise PaymentError("Order not found or not awaiting payment.")
    url = alipay.page_pay_url(
        out_trade_no=order.order_id,
        total_amount=order.total_amount,
        subject=f"{settings.ALIPAY_SUBJECT_PREFIX}{order.order_id}",
    )
    now = timezone.now()
    attempt, created = PaymentAttempt.objects.get_or_create(
        order=order,
        defaults={
            "amount": order.total_amount,
            "started_at": now,
            "last_started_at": now,
            "next_check_at": now + settings.RECONCILE_AFTER,
        },
    )
    if not created:
        PaymentAttempt.objects.filter(pk=attempt.pk).update(
            last_started_at=now, links_issued=F("links_issued") + 1
        )
    logger.info("payment link issued order_id=%s amount=%s", order.order_id, order.total_amount)
    return url


def params_clean(raw: dict[str, Any]) -> dict[str, str]:
    """Alipay's parameters as a plain dict of str, or PaymentError when they are not."""
    if len(raw) > MAX_PARAMS:
        raise PaymentError("Too many parameters.")
    params: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = value[-1] if value else ""
        if not isinstance(key, str) or not isinstance(value, str):
            raise PaymentError("Parameters must be text.")
        if len(key) > 64 or len(value) > MAX_VALUE_LENGTH:
            raise PaymentError("A parameter is too long.")
        params[key] = value
    return params


OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
BASE64 = re.compile(r"[A-Za-z0-9+/=]{16,1024}")


def inbound_params_check(params: dict[str, str]) -> None:
    """The shape every return or notification must have before it is worth a worker's time."""
    if not params.get("sign") or not params.get("out_trade_no"):
        raise PaymentError(
            "These are not Alipay's parameters: sign and out_trade_no are required."
        )
    if not OUT_TRADE_NO.fullmatch(params["out_trade_no"]):
        raise PaymentError("out_trade_no must be 1 to 64 letters, digits or underscores.")
    if not BASE64.fullmatch(params["sign"]):
        raise PaymentError("sign is not a base64 signature.")


def _storable(params: dict[str, Any]) -> dict[str, str]:
    """What arrived, fit for a JSON column: text only, no NUL, bounded size."""
    def text(value: Any) -> str:
        return str(value).replace("\x00", "\ufffd")[:MAX_VALUE_LENGTH]

    return {text(k)[:64]: text(v) for k, v in list(params.items())[:MAX_PARAMS]}


def _digest(params: dict[str, str]) -> str:
    canonical = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _dedupe_key(source: str, params: dict[str, str]) -> str:
    if source == Source.QUERY:
        return f"query:{params.get('trade_no', '')}:{params.get('trade_status', '')}"[:200]
    if source == Source.NOTIFY and params.get("notify_id"):
        notify_id = params["notify_id"]
        if len(notify_id) <= 128:
            return f"notify:{notify_id}"
        return f"notify:sha256:{hashlib.sha256(notify_id.encode()).hexdigest()}"
    return f"{source}:sha256:{_digest(params)}"


def event_record(
    *,
    source: str,
    params: dict[str, str],
    remote_addr: str | None = None,
    state: str = State.RECEIVED,
    reason: str = "",
    enqueue: bool = True,
) -> tuple[PaymentEvent, bool]:
    """Store what arrived, once. Returns the event and whether it is new.

    A new event in `received` is enqueued after commit; a repeat of one still waiting is
    enqueued again when the first may have been lost on the way to the broker.
    """
    params = _storable(params)
    key = _dedupe_key(source, params)
    out_trade_no = params.get("out_trade_no", "")[:64]
    try:
        with transaction.atomic():
            event = PaymentEvent.objects.create(
                source=source,
                dedupe_key=key,
                out_trade_no=out_trade_no,
                trade_no=params.get("trade_no", "")[:64],
                order=OrderInfo.objects.filter(order_id=out_trade_no).first(),
                raw_data=params,
                remote_addr=remote_addr,
                state=state,
                reason=reason,
            )
    except IntegrityError:
        event = PaymentEvent.objects.get(dedupe_key=key)
        PaymentEvent.objects.filter(pk=event.pk).update(deliveries=F("deliveries") + 1)
        if enqueue and event.state == State.RECEIVED and event.received_at < timezone.now() - (
            settings.PAYMENT_REENQUEUE_AFTER
        ):
            event_enqueue(event_id=event.pk)
        return event, False
    logger.info(
        "payment event stored id=%s source=%s out_trade_no=%s state=%s",
        event.pk, source, out_trade_no, state,
    )
    if enqueue and state == State.RECEIVED:
        event_enqueue(event_id=event.pk)
    return event, True


def event_enqueue(*, event_id: int) -> None:
    """Send the event to a worker once the current transaction commits."""
    transaction.on_commit(lambda: _publish("workers.tasks.event_process_task", event_id))


def _publish(task_name: str, arg: int) -> None:
    """Publish without making the caller wait for the broker.

    The row is already committed: a broker that is away (redis-py spends seconds on its
    own retries) must not hold up the answer to Alipay or the buyer. A message that never
    leaves is sent again by the sweeper.
    """
    _publisher().submit(_publish_now, task_name, arg)


@functools.cache
def _publisher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="publish")


def _publish_now(task_name: str, arg: int) -> None:
    from workers.celery import app

    try:
        app.send_task(task_name, args=[arg], retry=False)
    except Exception as exc:  # the broker's errors vary by transport
        logger.warning("enqueue failed task=%s id=%s error=%s", task_name, arg,
                       type(exc).__name__)


def event_wait(*, event_id: int, timeout: float) -> PaymentEvent:
    """Poll the event until it reaches a final state or the time is up.

    Only the outcome's fields are read: the raw payload is not fetched on every poll.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    polled = PaymentEvent.objects.only("state", "trade_no", "out_trade_no")
    while True:
        event = polled.get(pk=event_id)
        remaining = deadline - time.monotonic()
        if event.is_final or remaining <= 0:
            return event
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.25)


def _event_finish(event: PaymentEvent, state: str, reason: str = "", **fields: Any) -> bool:
    """Move the event out of `received`, once; the instance follows what the row holds."""
    changes = {"state": state, "reason": reason[:1000], "processed_at": timezone.now(), **fields}
    updated = PaymentEvent.objects.filter(pk=event.pk, state=State.RECEIVED).update(**changes)
    if not updated:  # another worker finished it first
        event.refresh_from_db()
        return False
    for name, value in changes.items():
        setattr(event, name, value)
    logger.info(
        "payment event id=%s out_trade_no=%s -> %s %s", event.pk, event.out_trade_no, state, reason
    )
    return True


def _event_check(event: PaymentEvent) -> CheckedEvent:
    """Verify a return or notification: signature, app, order, amount, seller.

    A query event holds a trade query response whose signature the client verified when
    it arrived: only its order and amount are checked.
    """
    params: dict[str, str] = dict(event.raw_data)
    if event.source != Source.QUERY:
        _event_authenticate(event, params)
    order = OrderInfo.objects.filter(order_id=params.get("out_trade_no", "")).first()
    if order is None:
        raise EventRejected("out_trade_no is not one of our orders")
    amount = alipay.parse_amount(params.get("total_amount"))
    if amount is None or amount != order.total_amount:
        raise EventRejected(
            f"total_amount {params.get('total_amount', '')[:16]!r} "
            f"differs from the order's {order.total_amount}"
        )
    trade_no = params.get("trade_no", "")
    if not trade_no:
        raise EventRejected("no trade_no")
    return CheckedEvent(
        order=order, trade_no=trade_no, amount=amount,
        trade_status=params.get("trade_status", ""),
    )


def _event_authenticate(event: PaymentEvent, params: dict[str, str]) -> None:
    """It comes from Alipay, for us: signature, app_id, seller_id and its kind."""
    if not alipay.signature_valid(params):
        raise EventRejected("signature does not verify with Alipay's public key")
    if params.get("app_id") != settings.ALIPAY_APPID:
        raise EventRejected(f"app_id {params.get('app_id', '')[:32]!r} is not ours")
    if settings.ALIPAY_SELLER_ID and params.get("seller_id") != settings.ALIPAY_SELLER_ID:
        raise EventRejected(f"seller_id {params.get('seller_id', '')[:32]!r} is not ours")
    if event.source == Source.RETURN and params.get("method") not in RETURN_METHODS:
        raise EventRejected("not a return redirect")
    if event.source == Source.NOTIFY and params.get("notify_type") != "trade_status_sync":
        raise EventRejected("not a trade status notification")


def _return_confirm(event: PaymentEvent, checked: CheckedEvent) -> None:
    """A return redirect carries no trade status: ask Alipay before it pays."""
    trade = alipay.trade_query(out_trade_no=checked.order.order_id)
    if trade is None or not trade.is_paid:
        status = trade.trade_status if trade else "TRADE_NOT_EXIST"
        if event.attempts >= RETURN_CONFIRM_ATTEMPTS:
            raise EventRejected(f"Alipay reports the trade as {status}")
        raise PaymentNotConfirmed(status)
    if trade.trade_no != checked.trade_no:
        raise EventRejected("Alipay reports another trade_no for this order")
    if trade.total_amount != checked.amount:
        raise EventRejected(f"Alipay reports the amount {trade.total_amount}")


def event_process(*, event_id: int) -> PaymentEvent:
    """Verify an event and apply it. Safe to run any number of times, also concurrently.

    Raises alipay.GatewayUnavailable, PaymentNotConfirmed or a database error when it is
    worth trying again later; everything else ends the event in a final state.
    """
    event = PaymentEvent.objects.get(pk=event_id)
    if event.is_final:
        return event
    # updated_at marks the latest attempt: the sweeper leaves an event alone while its
    # retries are still under way.
    PaymentEvent.objects.filter(pk=event.pk).update(
        attempts=F("attempts") + 1, updated_at=timezone.now()
    )
    event.attempts += 1
    if event.attempts > settings.PAYMENT_EVENT_MAX_ATTEMPTS:
        _event_finish(event, State.DEAD, f"gave up after {event.attempts - 1} attempts")
        return event
    try:
        _event_run(event)
    except EventRejected as exc:
        _event_finish(event, State.REJECTED, str(exc))
    except (alipay.GatewayUnavailable, alipay.GatewayRejected, PaymentNotConfirmed) as exc:
        PaymentEvent.objects.filter(pk=event.pk).update(
            last_error=f"{type(exc).__name__}: {exc}"[:1000]
        )
        raise
    return event


def _event_run(event: PaymentEvent) -> None:
    checked = _event_check(event)
    if event.source in (Source.NOTIFY, Source.QUERY) and (
        checked.trade_status not in alipay.PAID_STATUSES
    ):
        _event_finish(
            event, State.RECORDED, f"trade_status {checked.trade_status[:32]}",
            order=checked.order, trade_no=checked.trade_no,
        )
        return
    if event.source == Source.RETURN and not Payment.objects.filter(
        trade_id=checked.trade_no, order=checked.order
    ).exists():
        _return_confirm(event, checked)
    payment_apply(
        event=event, order_id=checked.order.order_id, trade_no=checked.trade_no,
        amount=checked.amount,
    )


def payment_apply(*, event: PaymentEvent, order_id: str, trade_no: str, amount: Decimal) -> Payment:
    """Pay the order with a verified trade, in one transaction; a repeat changes nothing."""
    with transaction.atomic():
        order = OrderInfo.objects.select_for_update().get(order_id=order_id)
        payment = Payment.objects.filter(trade_id=trade_no).first()
        reason = ""
        if payment is not None:
            if payment.order_id != order.order_id:
                raise EventRejected("trade_no already paid another order")
            reason = "already applied"
        elif order.status == OrderInfo.Status.UNPAID:
            payment = Payment.objects.create(
                order=order, trade_id=trade_no, amount=amount, source=event.source, event=event
            )
            OrderInfo.objects.filter(
                order_id=order.order_id, status=OrderInfo.Status.UNPAID
            ).update(status=OrderInfo.Status.UNSEND, updated_at=timezone.now())
            logger.info(
                "payment applied order_id=%s trade_no=%s amount=%s source=%s",
                order.order_id, trade_no, amount, event.source,
            )
        else:
            # The order cannot take this money (canceled, or paid by another trade): keep
            # it on record, to be refunded.
            payment = Payment.objects.create(
                order=order, trade_id=trade_no, amount=amount, source=event.source, event=event,
                status=Payment.Status.REFUND_PENDING,
                note=f"order was {order.status_name} when the payment arrived",
            )
            reason = payment.note
            logger.warning(
                "payment for order that cannot take it order_id=%s trade_no=%s status=%s",
                order.order_id, trade_no, order.status_name,
            )
            payment_refund_enqueue(payment_id=payment.pk)
        _event_finish(event, State.APPLIED, reason, order=order, trade_no=trade_no)
    return payment


def payment_refund_enqueue(*, payment_id: int) -> None:
    transaction.on_commit(lambda: _publish("workers.tasks.payment_refund_task", payment_id))


def payment_refund(*, payment_id: int) -> Payment:
    """Refund a payment its order could not take; idempotent through out_request_no."""
    payment = Payment.objects.select_related("order").get(pk=payment_id)
    if payment.status != Payment.Status.REFUND_PENDING:
        return payment
    request_no = payment.refund_request_no or f"refund-{payment.trade_id}"
    # The request number is kept before Alipay is asked: every retry reuses it.
    Payment.objects.filter(pk=payment.pk).update(
        refund_request_no=request_no, refund_tried_at=timezone.now()
    )
    result = alipay.trade_refund(
        out_trade_no=payment.order.order_id,
        refund_amount=payment.amount,
        out_request_no=request_no,
        reason="order could not take the payment",
    )
    Payment.objects.filter(pk=payment.pk, status=Payment.Status.REFUND_PENDING).update(
        status=Payment.Status.REFUNDED, refunded_at=timezone.now()
    )
    logger.info(
        "payment refunded order_id=%s trade_no=%s refund_fee=%s",
        payment.order_id, payment.trade_id, result.refund_fee,
    )
    payment.refresh_from_db()
    return payment
