"""The sweeper: finds what a lost wake-up or a lost refund message left behind.

Events keep their own schedule in the database (`next_attempt_at`, see payment/retry.py); the
sweeper only notices that some are due with nobody working on them, and says so. Exhausted
events are given up on by the same policy the workers read.
"""
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from payment.models import Payment, PaymentEvent
from payment.retry import retry_policy

logger = logging.getLogger(__name__)

State = PaymentEvent.State


@dataclass(frozen=True)
class Swept:
    due: int  # events waiting for a worker
    dead: int
    refunds: list[int] = field(default_factory=list)  # refunds to send again


def events_sweep(*, limit: int = 1000) -> Swept:
    """Count due events, give up on exhausted ones, and list refunds whose try went stale."""
    policy = retry_policy()
    now = timezone.now()
    due_events = PaymentEvent.objects.filter(state=State.RECEIVED, next_attempt_at__lte=now)
    dead = due_events.filter(attempts__gte=policy.max_attempts).update(
        state=State.DEAD, processed_at=now, updated_at=now,
        reason=f"gave up after {policy.max_attempts} attempts",
    )
    if dead:
        logger.warning("payment events given up (dead) count=%s", dead)
    due = due_events.count()
    stale = now - timedelta(seconds=policy.claim_lease)
    refunds = list(
        Payment.objects.filter(status=Payment.Status.REFUND_PENDING)
        .filter(Q(refund_tried_at__lt=stale)
                | Q(refund_tried_at__isnull=True, created_at__lt=stale))
        .values_list("pk", flat=True)[:limit]
    )
    if due or refunds:
        logger.info("sweep found due events=%s stale refunds=%s", due, len(refunds))
    return Swept(due=due, dead=dead, refunds=refunds)
