"""Selectors of the payment domain: functions that read and return plain data (the API
layer, payment/api/, serializes it)."""
from payment.models import Payment, PaymentEvent, Refund
from shop.models import OrderInfo, User

# Who canceled an order, by the source of the event its closing recorded.
CANCELED_BY: dict[str, str] = {PaymentEvent.Source.EXPIRY: "expiry",
                               PaymentEvent.Source.CANCEL: "buyer"}

# A buyer is told whether the money is on its way back, not how the workers get it there.
BUYER_REFUND_STATES: dict[str, str] = {Refund.State.SUCCEEDED: "succeeded",
                                       Refund.State.FAILED: "failed"}


def order_for_user(*, user: User, order_id: str) -> OrderInfo | None:
    return OrderInfo.objects.filter(order_id=order_id, user=user).first()


def order_payment_status(*, order: OrderInfo) -> dict[str, object]:
    """The order's payment state as the storefront polls it."""
    payment = order.payments.filter(status=Payment.Status.APPLIED).first()
    events = list(PaymentEvent.objects.filter(order=order).order_by("-received_at", "-id")[:50])
    latest = events[0] if events else None
    closing = (PaymentEvent.objects.filter(order=order, source__in=list(CANCELED_BY),
                                           state=PaymentEvent.State.RECORDED)
               .order_by("received_at", "id").first()
               if order.status == OrderInfo.Status.CANCELED else None)
    return {
        "order_id": order.order_id,
        "status": order.status_name,
        "trade_id": payment.trade_id if payment else None,
        "paid_at": payment.created_at if payment else None,
        "paid_amount": payment.amount if payment else None,
        "canceled_by": CANCELED_BY[closing.source] if closing else None,
        "cancel_reason": closing.reason if closing else None,
        "canceled_at": closing.received_at if closing else None,
        "latest_event": None if latest is None else {
            "source": latest.source,
            "state": latest.state,
            "received_at": latest.received_at,
        },
        "history": [
            {"source": e.source, "state": e.state, "reason": e.reason, "trade_no": e.trade_no,
             "received_at": e.received_at, "deliveries": e.deliveries}
            for e in events
        ],
        "refunds": order_refunds_for_buyer(order=order),
    }


def order_refunds_for_buyer(*, order: OrderInfo) -> list[dict[str, object]]:
    """The order's refunds: amount, state, reason and times.

    The reason is the buyer's to read: it goes to Alipay as `refund_reason`, which Alipay
    shows with the refund. Alipay's codes, the attempts and errors stay with the staff.
    """
    refunds = Refund.objects.filter(order=order).order_by("requested_at", "id")
    return [
        {"amount": r.amount, "state": BUYER_REFUND_STATES.get(r.state, "processing"),
         "reason": r.reason, "requested_at": r.requested_at, "succeeded_at": r.succeeded_at}
        for r in refunds
    ]
