"""Retention: settled events and old refusal counts are deleted, on the beat's schedule, by a
real worker; what waits, what is dead and every payment stay."""
import contextlib
import functools

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from payment.models import PaymentEvent, RefusedRequest
from payment.tasks import records_prune_task
from tests.factories import PaymentFactory
from tests.support import ManagedProcess, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _event(state: str, days_old: int, key: str) -> PaymentEvent:
    event = PaymentEvent.objects.create(source="notify", dedupe_key=key, raw_data={},
                                        state=state)
    PaymentEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timezone.timedelta(days=days_old))
    return event


def test_retention_deletes_settled_events_and_old_refusals_only(
    celery_workers: ManagedProcess,
) -> None:
    assert settings.CELERY_BEAT_SCHEDULE["prune-payment-records"]["task"] == (
        records_prune_task.name)
    old_applied = _event("applied", 500, "old-applied")
    payment = PaymentFactory(event=old_applied)
    kept = [_event("dead", 500, "old-dead"), _event("received", 500, "old-waiting"),
            _event("applied", 10, "recent")]
    old_rejected = _event("rejected", 401, "old-rejected")
    now = timezone.now()
    for days, addr in [(31, "10.0.0.1"), (1, "10.0.0.2")]:
        RefusedRequest.objects.create(source="notify", remote_addr=addr,
                                      hour=now - timezone.timedelta(days=days), reason="x",
                                      sample={}, first_seen=now, last_seen=now
                                      - timezone.timedelta(days=days))

    call_command("prune_payment_records", "--dry-run")
    assert PaymentEvent.objects.count() == 5  # a dry run deletes nothing

    records_prune_task.delay()  # what beat sends (CELERY_BEAT_SCHEDULE), on a real worker

    # Events go first, refusal counts after them: wait for both.
    wait_for(lambda: not PaymentEvent.objects.filter(pk=old_rejected.pk).exists()
             and RefusedRequest.objects.count() == 1, 20)
    assert set(PaymentEvent.objects.values_list("pk", flat=True)) == {e.pk for e in kept}
    payment.refresh_from_db()
    assert payment.event is None  # the payment stays; only its event went
    assert list(RefusedRequest.objects.values_list("remote_addr", flat=True)) == ["10.0.0.2"]


def _events_table_bytes() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_table_size(%s::regclass)", [PaymentEvent._meta.db_table])
        return int(cursor.fetchone()[0])


def _vacuum_count() -> int:
    """Manual VACUUMs of the events table so far (the statistics PostgreSQL keeps)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = %s::regclass",
                       [PaymentEvent._meta.db_table])
        return int(cursor.fetchone()[0])


def _vacuumed_since(count: int) -> bool:
    return _vacuum_count() > count


def _settled_events(prefix: str, count: int) -> None:
    PaymentEvent.objects.bulk_create(
        PaymentEvent(source="notify", dedupe_key=f"{prefix}-{i}", raw_data={"pad": "x" * 400},
                     state="applied") for i in range(count))
    PaymentEvent.objects.filter(dedupe_key__startswith=f"{prefix}-").update(
        received_at=timezone.now() - timezone.timedelta(days=500))


def test_retention_frees_the_space_of_what_it_deletes(celery_workers: ManagedProcess) -> None:
    """Round after round of events settled and pruned, the table stays the size of one round,
    even on a server whose autovacuum is off or behind: the job vacuums what it deleted."""
    sizes = []
    for round_ in range(3):
        _settled_events(f"round{round_}", 3000)
        sizes.append(_events_table_bytes())
        vacuums = _vacuum_count()
        records_prune_task.delay()  # on the session's real worker
        wait_for(lambda: not PaymentEvent.objects.exists(), 60)
        with contextlib.suppress(AssertionError):  # the vacuum follows the deletes
            wait_for(functools.partial(_vacuumed_since, vacuums), 20)
    assert sizes[2] <= sizes[0] * 1.2, sizes  # without a vacuum: three rounds' worth
