"""The sweeper: due events with nobody on them are noticed; past the attempt limit, dead."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from payment.models import PaymentEvent
from payment.processing import sweeper
from tests.factories import OrderFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("beat_paused")]


def _stuck_event(key: str, attempts: int, due_in: timedelta) -> PaymentEvent:
    order = OrderFactory(total_amount=Decimal("3.00"))
    return PaymentEvent.objects.create(
        source="return", dedupe_key=key, out_trade_no=order.order_id, order=order,
        raw_data={"out_trade_no": order.order_id}, attempts=attempts,
        next_attempt_at=timezone.now() + due_in,
    )


def test_sweeper_finds_due_events_and_gives_up_on_exhausted_ones() -> None:
    stuck = _stuck_event("stuck", attempts=1, due_in=-timedelta(hours=1))
    exhausted = _stuck_event("exhausted", attempts=50, due_in=-timedelta(hours=1))
    leased = _stuck_event("leased-one", attempts=1, due_in=timedelta(minutes=1))

    swept = sweeper.events_sweep()

    assert (swept.due, swept.dead) == (1, 1)
    exhausted.refresh_from_db()
    assert exhausted.state == PaymentEvent.State.DEAD
    assert "gave up after" in exhausted.reason
    for event in (stuck, leased):
        event.refresh_from_db()
        assert event.state == PaymentEvent.State.RECEIVED
    assert sweeper.events_sweep().dead == 0
