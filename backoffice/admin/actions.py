"""What an operator may do to payments from the admin: thin services over the common paths."""
import logging

from django.db import transaction
from django.utils import timezone

from infra.logs import log_ids
from payment.models import EventState, Payment, PaymentAttempt, PaymentEvent
from payment.reconciliation.trades import order_reconcile
from payment.refunds.ledger import late_payment_refund_ensure
from payment.tasks import events_process_task, refund_process_task
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


def event_reprocess(*, event_id: int) -> bool:
    """Give a dead or stuck event a fresh set of attempts. False when it is in another state."""
    with transaction.atomic():
        updated = PaymentEvent.objects.filter(
            pk=event_id, state__in=(EventState.DEAD, EventState.RECEIVED)
        ).update(state=EventState.RECEIVED, attempts=0, next_attempt_at=timezone.now(),
                 updated_at=timezone.now())
        if updated:
            transaction.on_commit(lambda: events_process_task.delay([event_id]))
    if updated:
        logger.info("payment event re-processed by operator id=%s", event_id,
                    extra=log_ids(event_id=event_id))
    return bool(updated)


def payment_refund_retry(*, payment: Payment) -> bool:
    """Send the refund of a payment waiting for one to the workers now; a refused one is
    asked for again. False when the payment is not waiting for a refund."""
    refund_id = late_payment_refund_ensure(payment_id=payment.pk)
    if refund_id is None:
        return False
    transaction.on_commit(lambda: refund_process_task.delay(refund_id))
    logger.info("refund sent again by operator trade_no=%s refund_id=%s", payment.trade_id,
                refund_id, extra=log_ids(order_id=payment.order_id, trade_no=payment.trade_id,
                                         event_id=payment.event_id))
    return True


def order_query_now(*, order_id: str) -> str:
    """Ask Alipay about an order at once: the outcome of `order_reconcile`, or `settled`."""
    order = OrderInfo.objects.get(order_id=order_id)
    if order.status != OrderInfo.Status.UNPAID:
        return "settled"
    now = timezone.now()
    # Reconciliation works from the attempt row; an order whose link was never issued has none.
    PaymentAttempt.objects.get_or_create(
        order=order,
        defaults={"amount": order.total_amount, "started_at": now, "last_started_at": now,
                  "links_issued": 0},
    )
    result = order_reconcile(order_id=order_id)
    for refund_id in result.refunds:
        refund_process_task.delay(refund_id)
    outcome = next(iter(result.counts), "no pay link issued")
    logger.info("order queried by operator order_id=%s outcome=%s", order_id, outcome,
                extra=log_ids(order_id=order_id))
    return outcome
