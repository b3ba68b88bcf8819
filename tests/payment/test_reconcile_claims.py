"""Overlapping reconciliation runs never claim the same order (PostgreSQL row locks)."""
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from payment import expiry, reconciliation
from payment.models import PaymentAttempt
from shop.models import OrderInfo, User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("beat_paused")]


PAST = timedelta(minutes=10)


def _orders_with_attempts(name: str, count: int, linked: int | None = None) -> list[OrderInfo]:
    """UNPAID orders made PAST ago; the first `linked` (default all) have a due pay link."""
    user = User.objects.create_user(username=name, password="x" * 12)
    past = timezone.now() - PAST
    orders = OrderInfo.objects.bulk_create(
        OrderInfo(order_id=f"{user.pk:09d}{i:06d}", user=user, total_amount=Decimal("1.00"))
        for i in range(count)
    )
    OrderInfo.objects.filter(user=user).update(created_at=past)
    PaymentAttempt.objects.bulk_create(
        PaymentAttempt(order=o, amount=o.total_amount, started_at=past, last_started_at=past,
                       next_check_at=past) for o in orders[:linked]
    )
    return orders


def test_overlapping_claims_are_disjoint_and_cover_everything() -> None:
    _orders_with_attempts("claims", 600)
    claimed: list[list[str]] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            while batch := reconciliation.attempts_claim(limit=50):
                with lock:
                    claimed.append(batch)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    flat = [order_id for batch in claimed for order_id in batch]
    assert len(flat) == len(set(flat)) == 600
    assert not reconciliation.attempts_claim(limit=50)
    assert PaymentAttempt.objects.filter(claimed_until__isnull=True).count() == 0


def test_a_batch_that_outlived_its_lease_leaves_the_orders_to_the_new_claim() -> None:
    _orders_with_attempts("lease", 10)
    past = timezone.now() - PAST
    stale_ids, stale_token = reconciliation.attempts_claim_with_token(limit=10)
    PaymentAttempt.objects.update(claimed_until=past)  # the first batch sat in the queue
    fresh_ids, fresh_token = reconciliation.attempts_claim_with_token(limit=10)

    assert sorted(stale_ids) == sorted(fresh_ids)
    assert reconciliation.attempts_hold(order_ids=stale_ids, token=stale_token) == []
    assert sorted(reconciliation.attempts_hold(order_ids=fresh_ids, token=fresh_token)) == sorted(
        fresh_ids)


def test_overlapping_expiry_runs_never_take_the_same_order(settings: Any) -> None:
    settings.ORDER_PAY_TIMEOUT = PAST / 2
    orders = _orders_with_attempts("expiry", 30, linked=20)

    first = expiry.orders_expired(limit=100)
    second = expiry.orders_expired(limit=100)

    linked = {o.order_id for o in orders[:20]}
    assert linked <= set(first)
    assert not linked & set(second)  # leased by the first run
    assert set(first) - linked == set(second) == {o.order_id for o in orders[20:]}
