"""The sweeper: stuck events are sent again, and past the attempt limit they are marked dead."""
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from payment import reconciliation
from payment.models import PaymentEvent
from shop.models import OrderInfo, User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("beat_paused")]


def _stuck_event(key: str, attempts: int, age: timedelta) -> PaymentEvent:
    user = User.objects.create_user(username=f"u-{key}", password="x" * 12)
    order = OrderInfo.objects.create(order_id=f"2026112500009{len(key):06d}{user.pk:03d}",
                                     user=user, total_amount=Decimal("3.00"))
    event = PaymentEvent.objects.create(
        source="return", dedupe_key=key, out_trade_no=order.order_id, order=order,
        raw_data={"out_trade_no": order.order_id}, attempts=attempts,
    )
    PaymentEvent.objects.filter(pk=event.pk).update(updated_at=timezone.now() - age)
    return event


def test_sweeper_resends_stuck_events_and_marks_exhausted_ones_dead() -> None:
    stuck = _stuck_event("stuck", attempts=1, age=timedelta(hours=1))
    exhausted = _stuck_event("exhausted", attempts=50, age=timedelta(hours=1))
    fresh = _stuck_event("fresh-one", attempts=1, age=timedelta(seconds=0))

    counts = reconciliation.events_sweep()

    assert counts["dead"] == 1 and counts["resent"] == 1
    exhausted.refresh_from_db()
    assert exhausted.state == PaymentEvent.State.DEAD
    assert "too many attempts" in exhausted.reason
    stuck.refresh_from_db()
    # Sent to the workers again (a worker may already have rejected its made-up payload).
    assert stuck.state in (PaymentEvent.State.RECEIVED, PaymentEvent.State.REJECTED)
    assert stuck.updated_at > timezone.now() - timedelta(minutes=1)  # not re-sent at once
    fresh.refresh_from_db()
    assert fresh.state == PaymentEvent.State.RECEIVED
    assert reconciliation.events_sweep()["resent"] == 0


def test_alipay_keys_command_keeps_existing_keys(tmp_path: Path) -> None:
    call_command("alipay_keys", "--dir", str(tmp_path))
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}
    call_command("alipay_keys", "--dir", str(tmp_path))
    second = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}

    assert sorted(first) == ["alipay_private_key.pem", "alipay_public_key.pem",
                             "app_private_key.pem", "app_public_key.pem"]
    assert first == second
    assert (tmp_path / "app_private_key.pem").stat().st_mode & 0o077 == 0
