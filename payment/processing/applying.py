"""Applying verified payments: many at once, in the caller's transaction, exactly once.

Under row locks on the orders, each verified paid trade becomes one `Payment` (unique
`trade_id`); the orders it pays move UNPAID -> UNSEND with one conditional UPDATE. A trade
for an order that can no longer take it is kept as REFUND_PENDING, with a refund of it in the
ledger, in the same transaction.
"""
import logging
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from infra.bulk_sql import marks, rows_execute, rows_select
from infra.logs import log_ids
from payment.models import Payment
from payment.processing.verification import Verified
from payment.refunds.ledger import late_payment_refunds_create
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


_ORDERS = OrderInfo._meta.db_table
# The batch's statements, written once: Django took longer to build them than PostgreSQL
# to run them. Every row here is a whole order or payment, read under the order's lock.
_STATUSES_SQL = f"SELECT order_id, status FROM {_ORDERS} WHERE order_id IN ({{}}) ORDER BY order_id"
_KNOWN_SQL = f"SELECT trade_id, order_id FROM {Payment._meta.db_table} WHERE trade_id IN ({{}})"
_PAY_SQL = (f"UPDATE {_ORDERS} SET status = %s, updated_at = %s"
            " WHERE status = %s AND order_id IN ({})")


@dataclass(frozen=True)
class Applied:
    """Per event: `reason` is empty for a fresh payment; `statuses`: the status of the payment
    each event made (not of one it repeats); `refunds`: the new late-payment refunds."""

    reasons: dict[int, str] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    refunds: list[int] = field(default_factory=list)


def payments_apply(*, items: list[Verified]) -> Applied:
    """Pay the orders of verified paid trades; a repeat of any of them changes nothing."""
    assert transaction.get_connection().in_atomic_block, "payments_apply needs a transaction"
    result = Applied()
    if not items:
        return result
    order_ids = sorted({item.order_id for item in items})
    trade_nos = sorted({item.trade_no for item in items})
    # Locked in one order by every batch, so that concurrent batches cannot deadlock.
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    statuses: dict[str, int] = {order_id: status for order_id, status in rows_select(
        f"{_STATUSES_SQL.format(marks(order_ids))}{lock}", order_ids)}
    known: dict[str, str] = {trade_no: order_id for trade_no, order_id in rows_select(
        _KNOWN_SQL.format(marks(trade_nos)), trade_nos)}
    new_payments: list[Payment] = []
    paying: set[str] = set()
    for item in items:
        owner = known.get(item.trade_no)
        if owner is not None:
            if owner != item.order_id:
                result.rejected[item.event_id] = "trade_no already paid another order"
            else:
                result.reasons[item.event_id] = "already applied"
            continue
        known[item.trade_no] = item.order_id
        payment = Payment(order_id=item.order_id, trade_id=item.trade_no, amount=item.amount,
                          source=item.source, event_id=item.event_id)
        if statuses.get(item.order_id) == OrderInfo.Status.UNPAID and (
            item.order_id not in paying
        ):
            paying.add(item.order_id)
            result.reasons[item.event_id] = ""
        else:
            status = OrderInfo.Status(statuses[item.order_id]).name if (
                item.order_id not in paying) else "PAID"
            payment.status = Payment.Status.REFUND_PENDING
            payment.note = f"order was {status} when the payment arrived"
            result.reasons[item.event_id] = payment.note
        new_payments.append(payment)
    created = Payment.objects.bulk_create(new_payments)
    result.statuses.update({payment.event_id: str(payment.status) for payment in created
                            if payment.event_id is not None})
    if paying:
        paid = sorted(paying)
        rows_execute(_PAY_SQL.format(marks(paid)), [
            OrderInfo.Status.UNSEND.value, timezone.now(), OrderInfo.Status.UNPAID.value, *paid])
    late = [payment for payment in created if payment.status == Payment.Status.REFUND_PENDING]
    result.refunds.extend(late_payment_refunds_create(payments=late))
    for payment in created:
        ids = log_ids(order_id=payment.order_id, trade_no=payment.trade_id,
                      event_id=payment.event_id, source=payment.source)
        if payment.status == Payment.Status.REFUND_PENDING:
            logger.warning(
                "payment for order that cannot take it order_id=%s trade_no=%s: %s",
                payment.order_id, payment.trade_id, payment.note, extra=ids,
            )
        else:
            logger.info("payment applied order_id=%s trade_no=%s amount=%s source=%s",
                        payment.order_id, payment.trade_id, payment.amount, payment.source,
                        extra=ids)
    return result
