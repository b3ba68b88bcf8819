"""Claims on reconciliation checks of pay links: a lease on the order's `PaymentAttempt`, so
that overlapping runs (reconciliation's, expiry's) never work on one order at once."""
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from payment.models import PaymentAttempt
from shop.models import OrderInfo


def claim_lease() -> timedelta:
    """How long a claimed check is left to its batch; after a lost batch (a killed worker,
    a broker that lost its message) the order is due again from then."""
    return timedelta(seconds=settings.RECONCILE_CLAIM_LEASE_SECONDS)


def reconciliation_checks_claim(*, limit: int) -> list[str]:
    """Claim due reconciliation checks. Overlapping runs never claim the same order."""
    return reconciliation_checks_claim_with_token(limit=limit)[0]


def reconciliation_checks_claim_with_token(*, limit: int) -> tuple[list[str], datetime]:
    """Claim due checks; the token (the lease's end) lets the batch prove it still holds them."""
    now = timezone.now()
    return reconciliation_checks_lease(Q(next_check_at__lte=now), "next_check_at", limit=limit,
                                       now=now)


def reconciliation_checks_lease(
    due: Q, order_by: str, *, limit: int, now: datetime
) -> tuple[list[str], datetime]:
    """Lease the UNPAID orders' pay links that match `due` and no one holds (row locks
    skipped); reconciliation's checks and expiry claim through it."""
    token = now + claim_lease()
    with transaction.atomic():
        order_ids = list(
            PaymentAttempt.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(due, order__status=OrderInfo.Status.UNPAID)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by(order_by).values_list("order_id", flat=True)[:limit]
        )
        PaymentAttempt.objects.filter(order_id__in=order_ids).update(claimed_until=token)
    return order_ids, token


def reconciliation_checks_hold(*, order_ids: list[str], token: datetime) -> list[str]:
    """The claimed orders this batch still holds, with their lease renewed.

    A batch that waited in the queue past its lease may have been claimed again by a later
    run; it then leaves those orders to that run instead of checking them twice.
    """
    with transaction.atomic():
        held = list(
            PaymentAttempt.objects.select_for_update(skip_locked=True)
            .filter(order_id__in=order_ids, claimed_until=token)
            .values_list("order_id", flat=True)
        )
        PaymentAttempt.objects.filter(order_id__in=held).update(
            claimed_until=timezone.now() + claim_lease()
        )
    return held
