"""Refunds of payments that their order could not take."""
import logging

from django.utils import timezone

from payment import alipay
from payment.models import Payment

logger = logging.getLogger(__name__)


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
