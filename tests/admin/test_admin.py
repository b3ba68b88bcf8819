"""Operators in the Django admin: dead events, re-processing, asking Alipay, refunds."""
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment.events import event_store
from payment.links import payment_link_create
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo, User
from shop.services import order_create
from tests.factories import sku_create
from tests.support import query_params, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers"),
]

EVENTS_URL = "/admin/payment/paymentevent/"


@pytest.fixture(autouse=True)
def reconciliation_out_of_the_way(settings: Any) -> None:
    """Only the operator's action may settle the orders here."""
    settings.RECONCILE_AFTER = timedelta(hours=1)


@pytest.fixture
def operator_client() -> Client:
    staff = User.objects.create_user(username="operator", password="op-pass-123",
                                     is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    return client


def _paid_at_alipay(sandbox: SandboxControl, username: str) -> tuple[OrderInfo, dict]:
    """An order the buyer paid at Alipay, while its notification got lost."""
    sandbox.set_faults(notify_drop=True)
    buyer = User.objects.create_user(username=username, password="s3cret-pass")
    sku = sku_create(price="35.00", stock=3)
    order = order_create(user=buyer, items=[(sku.pk, 1)])
    paid = sandbox.pay(payment_link_create(user=buyer, order_id=order.order_id))
    return order, paid


def _status(order: OrderInfo) -> int:
    return OrderInfo.objects.get(pk=order.pk).status


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_operator_finds_a_dead_event_and_reprocessing_pays_the_order(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox, "gaveup")
    stored = event_store(source=PaymentEvent.Source.RETURN,
                         params=query_params(paid["return_url"]), state=PaymentEvent.State.DEAD)
    event = PaymentEvent.objects.get(pk=stored.id)
    PaymentEvent.objects.filter(pk=event.pk).update(
        state=PaymentEvent.State.DEAD, attempts=10, reason="gave up: too many attempts",
        processed_at=timezone.now(),
    )

    changelist = operator_client.get(EVENTS_URL)
    assert changelist.status_code == 200
    banner = re.search(r'id="dead-count">(\d+)<', changelist.content.decode())
    assert banner and banner.group(1) == "1"
    dead = operator_client.get(EVENTS_URL, {"attention": "dead"})
    assert list(dead.context["cl"].result_list) == [event]
    detail = operator_client.get(f"{EVENTS_URL}{event.pk}/change/")
    assert paid["trade_no"] in detail.content.decode()  # the raw data, pretty-printed

    response = operator_client.post(
        EVENTS_URL + "?attention=dead",
        {"action": "reprocess_events", "_selected_action": [event.pk]}, follow=True,
    )

    assert any("Sent 1 event(s)" in m for m in _messages(response))
    wait_for(lambda: _status(order) == OrderInfo.Status.UNSEND, 20, 0.1)
    event.refresh_from_db()
    assert event.state == PaymentEvent.State.APPLIED
    payment = Payment.objects.get(order=order)
    assert (payment.trade_id, payment.source) == (paid["trade_no"], "return")
    assert not operator_client.get(EVENTS_URL, {"attention": "dead"}).context["cl"].result_list


def test_reprocess_leaves_final_events_alone(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    stored = event_store(source=PaymentEvent.Source.RETURN,
                         params={"out_trade_no": "nosuchorder", "sign": "x" * 20},
                         state=PaymentEvent.State.REJECTED, reason="not ours")
    event = PaymentEvent.objects.get(pk=stored.id)

    response = operator_client.post(
        EVENTS_URL, {"action": "reprocess_events", "_selected_action": [event.pk]}, follow=True
    )

    assert any("Skipped 1 event(s)" in m for m in _messages(response))
    event.refresh_from_db()
    assert (event.state, event.reason) == (PaymentEvent.State.REJECTED, "not ours")


def test_query_alipay_now_applies_a_payment_nobody_told_us_about(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox, "silentpayer")
    assert _status(order) == OrderInfo.Status.UNPAID

    response = operator_client.post(
        "/admin/shop/orderinfo/",
        {"action": "query_alipay_now", "_selected_action": [order.order_id]}, follow=True,
    )

    assert any("Alipay reports it paid" in m for m in _messages(response))
    assert _status(order) == OrderInfo.Status.UNSEND
    payment = Payment.objects.get(order=order)
    assert (payment.trade_id, payment.source) == (paid["trade_no"], "query")
    page = operator_client.get(f"/admin/shop/orderinfo/{order.order_id}/change/")
    assert page.status_code == 200
    assert paid["trade_no"] in page.content.decode()  # payment and history inlines


def test_refund_action_refunds_pending_payments_and_explains_applied_ones(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox, "canceledpayer")
    OrderInfo.objects.filter(pk=order.pk).update(status=OrderInfo.Status.CANCELED)
    pending = Payment.objects.create(
        order=order, trade_id=paid["trade_no"], amount=order.total_amount, source="query",
        status=Payment.Status.REFUND_PENDING, note="order was CANCELED",
    )
    other, other_paid = _paid_at_alipay(sandbox, "happypayer")
    applied = Payment.objects.create(order=other, trade_id=other_paid["trade_no"],
                                     amount=other.total_amount, source="return")

    response = operator_client.post(
        "/admin/payment/payment/",
        {"action": "refund_payments", "_selected_action": [pending.pk, applied.pk]},
        follow=True,
    )

    messages = _messages(response)
    assert any("sent to the workers" in m for m in messages)
    assert any("not done from here" in m for m in messages)
    wait_for(lambda: Payment.objects.get(pk=pending.pk).status == Payment.Status.REFUNDED,
             20, 0.1)
    assert sandbox.trade(order.order_id)["refund_fee"] in ("35.00", 35.0)
    assert Payment.objects.get(pk=applied.pk).status == Payment.Status.APPLIED
