"""Retention: how long payment events and refused-request counts are kept.

Settled events (applied, recorded, rejected) older than PAYMENT_EVENT_RETENTION_DAYS are
deleted; the payments they made stay (their `event` link becomes empty). Events still waiting
or dead are kept whatever their age: they need the workers or an operator. Refused-request
counts go after PAYMENT_REFUSED_RETENTION_DAYS, the lines of downloaded bills after
BILL_ENTRY_RETENTION_DAYS (their reports and findings stay). Deletes run in batches so that
no statement holds many locks or a long transaction.

Each run then vacuums the events table (its rows are updated as they are applied, and
deleted here), and the payments and refused-request tables when it deleted or unlinked rows
there: deleted rows free their space only once vacuumed, and a server whose autovacuum is
off or behind would otherwise grow these tables and their indexes without bound, however
little they hold. A plain VACUUM takes no lock that stops reads or writes.
"""
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from payment.models import EventState, Payment, PaymentEvent, RefusedRequest
from payment.reconciliation import bills

logger = logging.getLogger(__name__)

PRUNABLE_STATES = (EventState.APPLIED, EventState.RECORDED, EventState.REJECTED)
BATCH_SIZE = 2000


@dataclass(frozen=True)
class Pruned:
    events: int
    refused: int
    bill_entries: int = 0


def _events_prune(*, before: datetime, dry_run: bool) -> int:
    stale = PaymentEvent.objects.filter(state__in=PRUNABLE_STATES, received_at__lt=before)
    if dry_run:
        return stale.count()
    deleted = 0
    while ids := list(stale.order_by("id").values_list("id", flat=True)[:BATCH_SIZE]):
        with transaction.atomic():
            # Django sets the payments' `event` to NULL first (on_delete=SET_NULL).
            PaymentEvent.objects.filter(id__in=ids).delete()
        deleted += len(ids)
    return deleted


def _refused_prune(*, before: datetime, dry_run: bool) -> int:
    stale = RefusedRequest.objects.filter(last_seen__lt=before)
    if dry_run:
        return stale.count()
    deleted = 0
    while ids := list(stale.order_by("id").values_list("id", flat=True)[:BATCH_SIZE]):
        RefusedRequest.objects.filter(id__in=ids).delete()
        deleted += len(ids)
    return deleted


def records_prune(*, now: datetime | None = None, dry_run: bool = False) -> Pruned:
    """Delete what is past its retention; with dry_run only count it."""
    now = now or timezone.now()
    pruned = Pruned(
        events=_events_prune(
            before=now - timedelta(days=settings.PAYMENT_EVENT_RETENTION_DAYS), dry_run=dry_run),
        refused=_refused_prune(
            before=now - timedelta(days=settings.PAYMENT_REFUSED_RETENTION_DAYS),
            dry_run=dry_run),
        bill_entries=0 if dry_run else bills.entries_prune(
            before=(now - timedelta(days=settings.BILL_ENTRY_RETENTION_DAYS)).date()),
    )
    if dry_run:
        return pruned
    if pruned.events or pruned.refused or pruned.bill_entries:
        logger.info("payment records pruned events=%s refused=%s bill_entries=%s",
                    pruned.events, pruned.refused, pruned.bill_entries)
    vacuumed: list[type[PaymentEvent | Payment | RefusedRequest]] = [PaymentEvent]
    if pruned.events:
        vacuumed.append(Payment)  # their `event` links were set to NULL: updated rows
    if pruned.refused:
        vacuumed.append(RefusedRequest)
    _vacuum(vacuumed)
    return pruned


def _vacuum(models: list[type[PaymentEvent | Payment | RefusedRequest]]) -> None:
    """VACUUM (ANALYZE) the models' tables; skipped inside a transaction, where PostgreSQL
    refuses it (the next run outside one does it)."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    names = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in models)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {names}")
