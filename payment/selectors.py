"""Selectors of the payment domain: functions that read."""
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo, User


def order_for_user(*, user: User, order_id: str) -> OrderInfo | None:
    return OrderInfo.objects.filter(order_id=order_id, user=user).first()


def order_payment_status(*, order: OrderInfo) -> dict[str, object]:
    """The order's payment state as the storefront polls it."""
    payment = order.payments.filter(status=Payment.Status.APPLIED).first()
    events = list(PaymentEvent.objects.filter(order=order).order_by("-received_at", "-id")[:50])
    latest = events[0] if events else None
    return {
        "order_id": order.order_id,
        "status": order.status_name,
        "trade_id": payment.trade_id if payment else None,
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
    }
