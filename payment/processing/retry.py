"""The one retry policy: every decision to try an event again, or to give up on it, reads it.

The database holds the schedule (`PaymentEvent.attempts` and `next_attempt_at`), so a retry
survives a lost message or a killed worker; Celery only delivers the wake-ups.
"""
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int  # an event still not done after this many attempts is dead
    backoff: float  # seconds before the second attempt; doubles with each attempt
    backoff_max: float
    confirm_attempts: int  # trade queries that may find a returned trade unpaid
    claim_lease: float  # seconds a claimed event is left to the worker that claimed it

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the given number of failed attempts (full jitter above 1 s)."""
        ceiling = min(self.backoff * 2 ** max(0, attempts - 1), self.backoff_max)
        return ceiling if ceiling <= 1 else random.uniform(ceiling / 2, ceiling)

    def next_attempt_at(self, attempts: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.delay(attempts))

    def lease_until(self, now: datetime) -> datetime:
        """While a worker holds an event; after a crash the event is due again from then."""
        return now + timedelta(seconds=self.claim_lease)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def confirmations_exhausted(self, attempts: int) -> bool:
        return attempts >= self.confirm_attempts

    def task_options(self) -> dict[str, Any]:
        """Celery's own retry options, for a task that fails as a whole (database away)."""
        return {
            "retry_backoff": max(1, int(self.backoff)),
            "retry_backoff_max": int(self.backoff_max),
            "retry_jitter": True,
            # Past these the events still wait in the database, and the sweeper wakes them.
            "max_retries": self.max_attempts,
        }


def retry_policy() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.PAYMENT_EVENT_MAX_ATTEMPTS,
        backoff=settings.PAYMENT_RETRY_BACKOFF,
        backoff_max=settings.PAYMENT_RETRY_BACKOFF_MAX,
        confirm_attempts=settings.PAYMENT_RETURN_CONFIRM_ATTEMPTS,
        claim_lease=settings.PAYMENT_CLAIM_LEASE_SECONDS,
    )
