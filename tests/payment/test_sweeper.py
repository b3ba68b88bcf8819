"""The sweeper: due events with nobody on them are noticed; past the attempt limit, dead."""
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from payment import sweeper
from payment.models import PaymentEvent
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


def test_alipay_keys_command_keeps_existing_keys(tmp_path: Path) -> None:
    call_command("alipay_keys", "--dir", str(tmp_path))
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}
    call_command("alipay_keys", "--dir", str(tmp_path))
    second = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}

    assert sorted(first) == ["alipay_private_key.pem", "alipay_public_key.pem",
                             "app_private_key.pem", "app_public_key.pem"]
    assert first == second
    assert (tmp_path / "app_private_key.pem").stat().st_mode & 0o077 == 0
