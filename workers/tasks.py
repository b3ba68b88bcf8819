"""Thin tasks: take ids, call one service. Every task is idempotent (acks_late is safe)."""
import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from payment import services
from payment.alipay import GatewayUnavailable

logger = logging.getLogger(__name__)

# Worth another try: Alipay unreachable or busy, a trade not yet confirmed, the database away.
TRANSIENT_ERRORS = (GatewayUnavailable, services.PaymentNotConfirmed, OperationalError,
                    InterfaceError)
RETRY_OPTIONS = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}


@shared_task(**RETRY_OPTIONS)
def event_process_task(event_id: int) -> str:
    return str(services.event_process(event_id=event_id).state)


@shared_task(**RETRY_OPTIONS)
def payment_refund_task(payment_id: int) -> str:
    return str(services.payment_refund(payment_id=payment_id).status)
