"""The sweeper: finds what a lost wake-up or a lost refund message left behind.

Events keep their own schedule in the database (`next_attempt_at`, see
payment/processing/retry.py); the sweeper only notices that some are due with nobody working
on them, and says so. Exhausted events are given up on by the same policy the workers read.
"""
import logging
from dataclasses import dataclass, field

from django.db.models import Count
from django.utils import timezone

from payment import metrics
from payment.models import EventState, PaymentEvent
from payment.processing.retry import retry_policy
from payment.refunds.ledger import refunds_due

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    due: int  # events waiting for a worker
    dead: int
    refunds: list[int] = field(default_factory=list)  # refunds whose wake-up went missing


def events_sweep(*, limit: int = 1000) -> Swept:
    """Count due events, give up on exhausted ones, and list refunds left waiting."""
    policy = retry_policy()
    now = timezone.now()
    due_events = PaymentEvent.objects.filter(state=EventState.RECEIVED, next_attempt_at__lte=now)
    dead = due_events.filter(attempts__gte=policy.max_attempts).update(
        state=EventState.DEAD, processed_at=now, updated_at=now,
        reason=f"gave up after {policy.max_attempts} attempts",
    )
    if dead:
        logger.warning("payment events given up (dead) count=%s", dead)
        # This sweep's: the only ones given up at this very moment.
        for source, count in (PaymentEvent.objects.filter(state=EventState.DEAD, processed_at=now)
                              .order_by().values("source").annotate(n=Count("id"))
                              .values_list("source", "n")):
            metrics.events_processed(source=source, outcome=str(EventState.DEAD), count=count)
    due = due_events.count()
    refunds = refunds_due(limit=limit)
    if due or refunds:
        logger.info("sweep found due events=%s stale refunds=%s", due, len(refunds))
    return Swept(due=due, dead=dead, refunds=refunds)
