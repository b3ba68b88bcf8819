"""A claimed batch of checks holds its orders for RECONCILE_CLAIM_LEASE_SECONDS, then they are
due again (a batch lost with its worker or its message)."""
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from payment.models import PaymentAttempt
from payment.reconciliation import claims
from tests.factories import OrderFactory, PaymentAttemptFactory

pytestmark = pytest.mark.django_db


def test_a_claim_is_held_for_the_configured_lease_then_due_again(settings: Any) -> None:
    settings.RECONCILE_CLAIM_LEASE_SECONDS = 7
    past = timezone.now() - timedelta(minutes=10)
    order = OrderFactory(total_amount=Decimal("1.00"))
    PaymentAttemptFactory(order=order, started_at=past, next_check_at=past)

    before = timezone.now()
    order_ids, token = claims.reconciliation_checks_claim_with_token(limit=10)
    after = timezone.now()

    assert order_ids == [order.order_id]
    assert before + timedelta(seconds=7) <= token <= after + timedelta(seconds=7)
    assert PaymentAttempt.objects.get(order=order).claimed_until == token
    assert claims.reconciliation_checks_claim(limit=10) == []  # held
    PaymentAttempt.objects.filter(order=order).update(
        claimed_until=timezone.now() - timedelta(seconds=1))  # the lease ran out
    assert claims.reconciliation_checks_claim(limit=10) == [order.order_id]
