"""Operators in the Django admin: dead events, re-processing, asking Alipay, refunds."""
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.test import Client
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment.event_store import event_insert
from payment.models import Payment, PaymentEvent, Refund
from shop.models import OrderInfo
from tests.factories import PaymentFactory, StaffFactory, order_with_link
from tests.support import query_params, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers"),
]

EVENTS_URL = "/admin/payment/paymentevent/"
ORDERS_URL = "/admin/shop/orderinfo/"
PAYMENTS_URL = "/admin/payment/payment/"
VIEW_PERMISSIONS = ["shop.view_orderinfo", "payment.view_paymentevent", "payment.view_payment",
                    "payment.view_paymentattempt"]
ACTION_PERMISSIONS = ["payment.reprocess_event", "payment.query_alipay",
                      "payment.refund_payment"]


@pytest.fixture(autouse=True)
def reconciliation_out_of_the_way(settings: Any) -> None:
    """Only the operator's action may settle the orders here."""
    settings.RECONCILE_AFTER_SECONDS = 3600.0


def _staff_client(permissions: list[str], **fields: Any) -> Client:
    client = Client()
    client.force_login(StaffFactory(permissions=permissions, **fields))
    return client


@pytest.fixture
def operator_client() -> Client:
    """Staff who may look at everything and run the operator's actions; not a superuser."""
    return _staff_client(VIEW_PERMISSIONS + ACTION_PERMISSIONS, username="operator")


@pytest.fixture
def viewer_client() -> Client:
    """Staff who may look at orders, events and payments, and do nothing else."""
    return _staff_client(VIEW_PERMISSIONS)


def _paid_at_alipay(sandbox: SandboxControl) -> tuple[OrderInfo, dict]:
    """An order the buyer paid at Alipay, while its notification got lost."""
    sandbox.set_faults(notify_drop=True)
    order, url = order_with_link(total_amount=Decimal("35.00"))
    return order, sandbox.pay(url)


def _status(order: OrderInfo) -> int:
    return OrderInfo.objects.get(pk=order.pk).status


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_operator_finds_a_dead_event_and_reprocessing_pays_the_order(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox)
    stored = event_insert(source=PaymentEvent.Source.RETURN,
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
    stored = event_insert(source=PaymentEvent.Source.RETURN,
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
    order, paid = _paid_at_alipay(sandbox)
    assert _status(order) == OrderInfo.Status.UNPAID

    response = operator_client.post(
        ORDERS_URL,
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
    order, paid = _paid_at_alipay(sandbox)
    OrderInfo.objects.filter(pk=order.pk).update(status=OrderInfo.Status.CANCELED)
    pending = PaymentFactory(order=order, trade_id=paid["trade_no"], source="query",
                             status=Payment.Status.REFUND_PENDING, note="order was CANCELED")
    other, other_paid = _paid_at_alipay(sandbox)
    applied = PaymentFactory(order=other, trade_id=other_paid["trade_no"], source="return")

    response = operator_client.post(
        PAYMENTS_URL,
        {"action": "refund_payments", "_selected_action": [pending.pk, applied.pk]},
        follow=True,
    )

    messages = _messages(response)
    assert any("sent to the workers" in m for m in messages)
    assert any("refund it with an amount and a reason from its page" in m for m in messages)
    wait_for(lambda: Payment.objects.get(pk=pending.pk).status == Payment.Status.REFUNDED,
             20, 0.1)
    assert sandbox.trade(order.order_id)["refund_fee"] in ("35.00", 35.0)
    assert Payment.objects.get(pk=applied.pk).status == Payment.Status.APPLIED


def _offered_actions(client: Client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


@pytest.mark.parametrize(
    ("url", "action", "permission"),
    [(EVENTS_URL, "reprocess_events", "payment.reprocess_event"),
     (ORDERS_URL, "query_alipay_now", "payment.query_alipay"),
     (PAYMENTS_URL, "refund_payments", "payment.refund_payment")],
    ids=["reprocess", "query-alipay", "refund"],
)
def test_each_action_is_offered_only_with_its_own_permission(
    url: str, action: str, permission: str
) -> None:
    viewer = _staff_client(VIEW_PERMISSIONS)
    others = [p for p in ACTION_PERMISSIONS if p != permission]
    with_the_others = _staff_client(VIEW_PERMISSIONS + others)
    with_it = _staff_client([*VIEW_PERMISSIONS, permission])

    assert action not in _offered_actions(viewer, url)
    assert action not in _offered_actions(with_the_others, url)
    assert action in _offered_actions(with_it, url)


def test_view_only_staff_cannot_reprocess_a_dead_event(
    viewer_client: Client, operator_client: Client, sandbox: SandboxControl,
    alipay_settings: dict,
) -> None:
    order, paid = _paid_at_alipay(sandbox)
    stored = event_insert(source=PaymentEvent.Source.RETURN,
                         params=query_params(paid["return_url"]), state=PaymentEvent.State.DEAD)
    PaymentEvent.objects.filter(pk=stored.id).update(
        state=PaymentEvent.State.DEAD, attempts=10, reason="gave up: too many attempts")

    page = viewer_client.get(EVENTS_URL).content.decode()
    assert 'id="dead-count">1<' in page  # the viewer still sees what needs attention
    assert "run “Re-process event”" not in page
    assert "run “Re-process event”" in operator_client.get(EVENTS_URL).content.decode()
    response = viewer_client.post(
        EVENTS_URL, {"action": "reprocess_events", "_selected_action": [stored.id]}, follow=True)

    assert response.status_code == 200
    assert not any("Sent" in m for m in _messages(response))
    event = PaymentEvent.objects.get(pk=stored.id)
    assert (event.state, event.attempts) == (PaymentEvent.State.DEAD, 10)
    assert _status(order) == OrderInfo.Status.UNPAID
    assert not Payment.objects.filter(order=order).exists()


def test_view_only_staff_cannot_query_alipay(
    viewer_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, _ = _paid_at_alipay(sandbox)

    response = viewer_client.post(
        ORDERS_URL, {"action": "query_alipay_now", "_selected_action": [order.order_id]},
        follow=True,
    )

    assert response.status_code == 200
    assert not any("Alipay reports" in m for m in _messages(response))
    assert _status(order) == OrderInfo.Status.UNPAID
    assert not Payment.objects.filter(order=order).exists()
    assert not PaymentEvent.objects.filter(order=order).exists()


def test_view_only_staff_cannot_refund(
    viewer_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox)
    OrderInfo.objects.filter(pk=order.pk).update(status=OrderInfo.Status.CANCELED)
    pending = PaymentFactory(order=order, trade_id=paid["trade_no"], source="query",
                             status=Payment.Status.REFUND_PENDING, note="order was CANCELED")

    response = viewer_client.post(
        PAYMENTS_URL, {"action": "refund_payments", "_selected_action": [pending.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert not any("sent to the workers" in m for m in _messages(response))
    time.sleep(2)  # a refund sent to the workers would be done by now
    pending.refresh_from_db()
    assert (pending.status, pending.refund_tried_at) == (Payment.Status.REFUND_PENDING, None)
    assert float(sandbox.trade(order.order_id).get("refund_fee") or 0) == 0


def _applied_payment(sandbox: SandboxControl) -> Payment:
    """A payment that paid its order (its notification was lost; a query applied it)."""
    order, paid = _paid_at_alipay(sandbox)
    OrderInfo.objects.filter(pk=order.pk).update(status=OrderInfo.Status.UNSEND)
    return PaymentFactory(order=order, trade_id=paid["trade_no"], source="query")


def test_operator_refunds_part_of_a_payment_from_its_page(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    payment = _applied_payment(sandbox)
    change_url = f"{PAYMENTS_URL}{payment.pk}/change/"
    refund_url = f"{PAYMENTS_URL}{payment.pk}/refund/"
    assert 'id="refund-link"' in operator_client.get(change_url).content.decode()
    form = operator_client.get(refund_url)
    assert form.status_code == 200
    assert 'id="refund-left">35.00<' in form.content.decode()

    too_much = operator_client.post(refund_url, _rendered_form(
        form.content.decode(), amount="35.01", reason="All and more"))
    assert too_much.status_code == 200
    assert "more than is left to refund" in too_much.content.decode()
    assert not Refund.objects.exists()

    response = operator_client.post(refund_url, _rendered_form(
        form.content.decode(), amount="10.00", reason="Scratched lid"), follow=True)

    assert any("sent to the workers" in m for m in _messages(response))
    refund = Refund.objects.get(payment=payment)
    assert (refund.amount, refund.reason, refund.source) == (
        Decimal("10.00"), "Scratched lid", Refund.Source.OPERATOR)
    assert refund.requested_by is not None and refund.requested_by.username == "operator"
    wait_for(lambda: Refund.objects.get(pk=refund.pk).state == Refund.State.SUCCEEDED, 20, 0.1)
    assert [r["out_request_no"] for r in sandbox.trade(payment.order_id)["refunds"]] == [
        refund.out_request_no]
    assert _status(payment.order) == OrderInfo.Status.UNSEND  # 25.00 is still paid
    for page in (change_url, f"{ORDERS_URL}{payment.order_id}/change/"):
        inline = operator_client.get(page).content.decode()
        assert refund.out_request_no in inline and "succeeded" in inline


def _rendered_form(page: str, **typed: str) -> dict[str, str]:
    """What a browser posts from the refund page: its hidden fields, and what was typed."""
    form = page[page.index('id="refund-form"'):]
    return {**dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)),
            **typed}


def test_double_clicked_refund_form_refunds_once(
    web: str, sandbox: SandboxControl
) -> None:
    """Two posts of one rendered form, at the same moment (a double click), are one refund."""
    payment = _applied_payment(sandbox)
    refund_url = f"{web}{PAYMENTS_URL}{payment.pk}/refund/"
    signed_in = _staff_client(VIEW_PERMISSIONS + ACTION_PERMISSIONS, username="operator")
    browsers = [requests.Session(), requests.Session()]
    for browser in browsers:
        browser.trust_env = False
        browser.cookies.set("sessionid", signed_in.cookies["sessionid"].value)
    page = browsers[0].get(refund_url, timeout=10)
    assert page.status_code == 200
    browsers[1].cookies.set("csrftoken", browsers[0].cookies["csrftoken"])
    form = _rendered_form(page.text, amount="10.00", reason="Scratched lid")
    start = threading.Barrier(2)

    def click(browser: requests.Session) -> requests.Response:
        start.wait()
        return browser.post(refund_url, data=form, timeout=20, allow_redirects=False)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(click, browsers))

    assert [a.status_code for a in answers] == [302, 302], [a.text[:300] for a in answers]
    refund = Refund.objects.get(payment=payment)
    assert (refund.amount, refund.source) == (Decimal("10.00"), Refund.Source.OPERATOR)
    wait_for(lambda: Refund.objects.get(pk=refund.pk).state == Refund.State.SUCCEEDED, 20, 0.1)
    time.sleep(1)  # a second refund sent to the workers would be at the sandbox by now
    assert [r["out_request_no"] for r in sandbox.trade(payment.order_id)["refunds"]] == [
        refund.out_request_no]
    assert Refund.objects.filter(payment=payment).count() == 1


def test_refund_form_reads_amounts_as_the_api_does(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    payment = _applied_payment(sandbox)
    refund_url = f"{PAYMENTS_URL}{payment.pk}/refund/"
    page = operator_client.get(refund_url).content.decode()

    answers = {amount: operator_client.post(refund_url, _rendered_form(
                   page, amount=amount, reason="Scratched lid"))
               for amount in ["1e1", "\uff11.\uff10\uff10", "099.00", " 10.00", "10.00\u00a0",
                              "10.001"]}

    taken = [amount for amount, answer in answers.items()
             if answer.status_code != 200 or "such as 12.50" not in answer.content.decode()]
    assert not taken
    assert not Refund.objects.exists()


def test_view_only_staff_cannot_open_the_refund_form(
    viewer_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    payment = _applied_payment(sandbox)
    refund_url = f"{PAYMENTS_URL}{payment.pk}/refund/"

    page = viewer_client.get(f"{PAYMENTS_URL}{payment.pk}/change/")
    form = viewer_client.get(refund_url)
    post = viewer_client.post(refund_url, {"amount": "10.00", "reason": "Sneaky"})

    assert page.status_code == 200 and 'id="refund-link"' not in page.content.decode()
    assert (form.status_code, post.status_code) == (403, 403)
    assert not Refund.objects.exists()


def test_a_failed_query_looks_like_a_failure(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, _paid = _paid_at_alipay(sandbox)
    sandbox.set_faults(error_rate=1.0, error_kind="http500", methods=["alipay.trade.query"])

    response = operator_client.post(
        ORDERS_URL,
        {"action": "query_alipay_now", "_selected_action": [order.order_id]}, follow=True,
    )

    levels = {str(m): m.level_tag for m in response.context["messages"]}
    assert [level for text, level in levels.items() if order.order_id in text] == ["error"]
    assert 'class="error"' in response.content.decode()
    assert _status(order) == OrderInfo.Status.UNPAID


def test_records_are_shown_read_only_without_save_buttons(
    operator_client: Client, sandbox: SandboxControl, alipay_settings: dict
) -> None:
    order, paid = _paid_at_alipay(sandbox)
    operator_client.post(ORDERS_URL, {"action": "query_alipay_now",
                                      "_selected_action": [order.order_id]})
    payment = Payment.objects.get(order=order)
    event = PaymentEvent.objects.filter(order=order).first()
    assert event is not None

    for url in (f"/admin/payment/payment/{payment.pk}/change/",
                f"/admin/payment/paymentevent/{event.pk}/change/"):
        page = operator_client.get(url).content.decode()
        assert 'name="_save"' not in page, url
        assert 'name="refund_tried_at"' not in page, url
    admin_page = Client()
    admin_page.force_login(StaffFactory(is_superuser=True))
    page = admin_page.get(f"/admin/payment/payment/{payment.pk}/change/").content.decode()
    assert 'name="_save"' not in page and paid["trade_no"] in page
