"""Overlapping reconciliation runs never claim the same order (PostgreSQL row locks)."""
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from payment.models import PaymentAttempt
from payment.reconciliation import claims, expiry
from shop.models import OrderInfo
from tests.factories import OrderFactory, PaymentAttemptFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("beat_paused")]


PAST = timedelta(minutes=10)


def _orders_with_attempts(count: int, linked: int | None = None) -> list[OrderInfo]:
    """UNPAID orders of one buyer made PAST ago; the first `linked` (default all) have a due
    pay link."""
    past = timezone.now() - PAST
    buyer = UserFactory()
    orders = OrderFactory.create_batch(count, user=buyer, total_amount=Decimal("1.00"))
    OrderInfo.objects.filter(user=buyer).update(created_at=past)
    for order in orders[:linked]:
        PaymentAttemptFactory(order=order, started_at=past, next_check_at=past)
    return orders


def test_overlapping_claims_are_disjoint_and_cover_everything() -> None:
    _orders_with_attempts(600)
    claimed: list[list[str]] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            while batch := claims.reconciliation_checks_claim(limit=50):
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
    assert not claims.reconciliation_checks_claim(limit=50)
    assert PaymentAttempt.objects.filter(claimed_until__isnull=True).count() == 0


def test_a_batch_that_outlived_its_lease_leaves_the_orders_to_the_new_claim() -> None:
    _orders_with_attempts(10)
    past = timezone.now() - PAST
    stale_ids, stale_token = claims.reconciliation_checks_claim_with_token(limit=10)
    PaymentAttempt.objects.update(claimed_until=past)  # the first batch sat in the queue
    fresh_ids, fresh_token = claims.reconciliation_checks_claim_with_token(limit=10)

    assert sorted(stale_ids) == sorted(fresh_ids)
    assert claims.reconciliation_checks_hold(order_ids=stale_ids, token=stale_token) == []
    assert sorted(claims.reconciliation_checks_hold(order_ids=fresh_ids,
                                                    token=fresh_token)) == sorted(fresh_ids)


def test_overlapping_expiry_runs_never_take_the_same_order(settings: Any) -> None:
    settings.ORDER_PAY_TIMEOUT_SECONDS = (PAST / 2).total_seconds()
    orders = _orders_with_attempts(30, linked=20)

    first = expiry.orders_expired(limit=100)
    second = expiry.orders_expired(limit=100)

    linked = {o.order_id for o in orders[:20]}
    assert linked <= set(first)
    assert not linked & set(second)  # leased by the first run
    assert set(first) - linked == set(second) == {o.order_id for o in orders[20:]}
