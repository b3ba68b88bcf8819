"""Thin tasks: take ids, call one service. Every task is idempotent (acks_late is safe)."""
import logging
from datetime import datetime
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from payment import reconciliation, services
from payment.alipay import GatewayUnavailable

logger = logging.getLogger(__name__)

# Worth another try: Alipay unreachable or busy, a trade not yet confirmed, the database away.
TRANSIENT_ERRORS = (GatewayUnavailable, services.PaymentNotConfirmed, OperationalError,
                    InterfaceError)
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}
MAX_BATCHES_PER_RUN = 100


@shared_task(**RETRY_OPTIONS)
def event_process_task(event_id: int) -> str:
    return str(services.event_process(event_id=event_id).state)


@shared_task(**RETRY_OPTIONS)
def payment_refund_task(payment_id: int) -> str:
    return str(services.payment_refund(payment_id=payment_id).status)


@shared_task
def events_sweep_task() -> dict[str, int]:
    return reconciliation.events_sweep()


@shared_task
def reconcile_dispatch_task() -> int:
    """Claim every due check in batches and spread the batches over the workers."""
    claimed = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        order_ids, token = reconciliation.attempts_claim_with_token(
            limit=settings.RECONCILE_BATCH_SIZE
        )
        if not order_ids:
            break
        reconcile_batch_task.delay(order_ids, token.isoformat())
        claimed += len(order_ids)
    return claimed


@shared_task
def reconcile_batch_task(order_ids: list[str], token: str) -> dict[str, int]:
    held = reconciliation.attempts_hold(
        order_ids=order_ids, token=datetime.fromisoformat(token)
    )
    return reconciliation.orders_reconcile(
        order_ids=held, concurrency=settings.RECONCILE_CONCURRENCY
    )


@shared_task
def orders_expire_dispatch_task() -> int:
    order_ids = reconciliation.orders_expired(limit=settings.RECONCILE_BATCH_SIZE)
    for order_id in order_ids:
        order_expire_task.delay(order_id)
    return len(order_ids)


@shared_task(**RETRY_OPTIONS)
def order_expire_task(order_id: str) -> str:
    return reconciliation.order_expire(order_id=order_id)
