"""A buyer cancels an unpaid order: the same closing as expiry (the trade closed at Alipay,
asked about once more), recorded as the buyer's cancel."""
import logging
from functools import partial

from django.db import transaction

from payment import gateway, tasks
from payment.errors import PaymentError
from payment.reconciliation.expiry import BUYER_CANCELED, CANCELED, SETTLED, order_unpaid_close
from shop.models import OrderInfo, User

logger = logging.getLogger(__name__)


class CancelOrderNotFound(PaymentError):
    """No such order of this buyer."""


class CancelConflict(PaymentError):
    """The order is not awaiting payment (any more): paid, canceled or expired."""


class CancelUnavailable(PaymentError):
    """Alipay could not be asked to close the trade; the order is still unpaid."""


# Why an order that is not UNPAID cannot be canceled, in the buyer's words.
NOT_CANCELABLE = {
    OrderInfo.Status.CANCELED: "This order is already canceled.",
    OrderInfo.Status.REFUNDED: "This order was paid and refunded; there is nothing to cancel.",
}
PAID_MEANWHILE = ("This order was paid at Alipay, so it cannot be canceled. It goes ahead as a "
                  "paid order; to get your money back, ask the shop for a refund.")
PAID = "This order is paid, so it can no longer be canceled; ask the shop for a refund instead."


def order_cancel(*, user: User, order_id: str) -> OrderInfo:
    """Cancel the buyer's UNPAID order; Alipay's word that it is paid wins over the cancel.

    Raises CancelOrderNotFound (not this buyer's), CancelConflict (not UNPAID, or paid at
    Alipay on the way: then it is paid here too) or CancelUnavailable (Alipay could not be
    asked; nothing changed).
    """
    order = OrderInfo.objects.filter(order_id=order_id, user=user).first()
    if order is None:
        raise CancelOrderNotFound("Order not found.")
    if order.status != OrderInfo.Status.UNPAID:
        raise CancelConflict(_not_cancelable(order))
    try:
        outcome = order_unpaid_close(order_id=order_id, closing=BUYER_CANCELED)
    except (gateway.GatewayUnavailable, gateway.GatewayRejected) as exc:
        logger.warning("cancel: Alipay could not close the trade order_id=%s: %s", order_id, exc)
        raise CancelUnavailable("Alipay could not be reached to close this order's payment, "
                                "so it is not canceled yet. Please try again in a moment.") from exc
    for refund_id in outcome.refunds:  # a payment that came too late for another closing
        transaction.on_commit(partial(tasks.refund_process_task.delay, refund_id))
    order.refresh_from_db()
    result = outcome.counts_by_order.get(order_id)
    if result == CANCELED:
        return order
    if result == SETTLED:
        raise CancelConflict(_not_cancelable(order))
    # Alipay says the trade is paid: applied now, or stored for the workers to apply.
    logger.info("cancel refused: paid at Alipay order_id=%s outcome=%s", order_id, result)
    raise CancelConflict(PAID_MEANWHILE)


def _not_cancelable(order: OrderInfo) -> str:
    return NOT_CANCELABLE.get(OrderInfo.Status(order.status), PAID)
