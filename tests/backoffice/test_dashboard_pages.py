"""An operator opens the payments dashboard in a real browser after a day's mix of traffic.

Payments are real: paid at the sandbox's cashier and brought in by Alipay's notification, the
buyer's return or a reconciliation query, through the live web app and Celery workers. So are
the forged returns rejected, the event that died while Alipay's trade query was failing, the
failed reconciliation query and the refund. Only the daily bill's report is made up: its
reconciliation runs once a day on yesterday's bill.
"""
import re
import statistics
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone
from playwright.sync_api import Page, expect

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentAttempt, PaymentEvent, Refund
from payment.reconciliation.trades import order_reconcile
from payment.refunds.requests import refund_request
from tests.factories import (
    StaffFactory,
    UserFactory,
    bill_report_create,
    signed_in,
    sku_create,
)
from tests.support import ShopClient, query_params, signed_return, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Nothing scheduled may change the rows between the page and the test's own counts.
    pytest.mark.usefixtures("beat_paused"),
]

PASSWORD = "op-pass-123"
OPERATOR_PERMISSIONS = ["payment.view_paymentevent", "payment.view_payment",
                        "payment.view_paymentattempt", "payment.view_refund",
                        "payment.view_billreport", "shop.view_orderinfo"]
DEAD_AFTER = {"PAYMENT_EVENT_MAX_ATTEMPTS": "2", "PAYMENT_RETRY_BACKOFF": "0.2"}


def _pay_link(shop: ShopClient, sku_id: int) -> tuple[str, str]:
    order_id = shop.order([{"sku_id": sku_id, "count": 1}])["order_id"]
    link = shop.pay_link(order_id)
    assert link.status_code == 200, link.text
    return order_id, link.json()["alipay_url"]


def _paid(order_id: str) -> bool:
    return Payment.objects.filter(order_id=order_id).exists()


def _a_day_of_traffic(shop: ShopClient, sandbox: SandboxControl, settings: Any,
                      dev_keys: Path) -> dict[str, str]:
    """The scripted mix; returns the order ids the test looks for afterwards."""
    sku = sku_create(name="Tea tin", price="20.00", stock=100)
    buyer = signed_in(ShopClient(shop.base_url), UserFactory())
    orders: dict[str, str] = {}

    for n in range(3):  # paid, and Alipay's notification brings the payment
        order_id, url = _pay_link(buyer, sku.pk)
        sandbox.pay(url)
        wait_for(lambda o=order_id: _paid(o), 20, 0.1)
        orders[f"notify-{n}"] = order_id

    sandbox.set_faults(notify_drop=True)
    for n in range(2):  # paid, and the buyer's return brings the payment
        order_id, url = _pay_link(buyer, sku.pk)
        paid = sandbox.pay(url)
        response = shop.put_status(query_params(paid["return_url"]))
        assert response.status_code == 200, response.text
        orders[f"return-{n}"] = order_id

    # Paid, nobody told us: reconciliation's trade query finds it.
    order_id, url = _pay_link(buyer, sku.pk)
    sandbox.pay(url)
    assert order_reconcile(order_id=order_id).counts == {"applied": 1}
    orders["found"] = order_id
    # A pay link never used: the query finds no payment.
    order_id, _ = _pay_link(buyer, sku.pk)
    assert order_reconcile(order_id=order_id).counts == {"unpaid": 1}
    orders["unpaid"] = order_id

    mallory = signed_in(ShopClient(shop.base_url), UserFactory())
    alipay_key = (dev_keys / "alipay_private_key.pem").read_bytes()
    for n in range(2):  # signed as Alipay signs, for the wrong amount: rejected
        order_id, _ = _pay_link(mallory, sku.pk)
        forged = signed_return(order_id, "0.01", f"20261126220014{n:014d}", alipay_key)
        assert shop.put_status(forged).status_code == 403
        orders[f"rejected-{n}"] = order_id

    # Alipay's trade query fails from now on: a return cannot be confirmed, and dies.
    sandbox.set_faults(error_rate=1.0, error_kind="20000", methods=["alipay.trade.query"])
    order_id, url = _pay_link(buyer, sku.pk)
    paid = sandbox.pay(url)
    settings.RETURN_WAIT_SECONDS = 0
    assert shop.put_status(query_params(paid["return_url"])).status_code == 202
    wait_for(lambda: PaymentEvent.objects.filter(
        out_trade_no=order_id, state=PaymentEvent.State.DEAD).exists(), 30, 0.1)
    orders["dead"] = order_id
    order_id, _ = _pay_link(mallory, sku.pk)
    assert order_reconcile(order_id=order_id).counts == {"error": 1}
    orders["query-error"] = order_id
    sandbox.clear_faults()

    refunded = refund_request(order_id=orders["notify-0"], amount=Decimal("5.00"),
                              reason="Dented tin", requested_by=None).refund
    wait_for(lambda: Refund.objects.get(pk=refunded.pk).state == Refund.State.SUCCEEDED,
             30, 0.1)

    bill_report_create(day=timezone.localdate() - timedelta(days=1),
                       findings={"missing_here": 1}, matched=6)
    return orders


def _sign_in_to_the_admin(page: Page, web: str) -> None:
    StaffFactory(username="night-operator", password=PASSWORD, permissions=OPERATOR_PERMISSIONS)
    page.goto(f"{web}/admin/")
    page.fill("#id_username", "night-operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#dashboard-link")).to_be_visible()


def _shown(page: Page) -> dict[str, str]:
    return dict(page.eval_on_selector_all(
        "[data-figure]", "nodes => nodes.map(n => [n.dataset.figure, n.dataset.value])"))


def _percentiles(start: datetime) -> tuple[int, float, float]:
    """Time to paid from the database, with Python's own interpolation (R's type 7, as
    PostgreSQL's percentile_cont)."""
    took = sorted(
        (p.created_at - p.order.payment_attempt.started_at).total_seconds()
        for p in Payment.objects.select_related("order__payment_attempt")
        .filter(status=Payment.Status.APPLIED, created_at__gte=start)
    )
    cuts = statistics.quantiles(took, n=20, method="inclusive")
    return len(took), cuts[9], cuts[18]


def test_operator_sees_the_day_on_the_dashboard_and_follows_a_chart_to_its_list(
    page: Page, web: str, shop: ShopClient, sandbox: SandboxControl, settings: Any,
    dev_keys: Path, exclusive_workers: Any, screenshots: Path,
) -> None:
    exclusive_workers("dashboard", **DEAD_AFTER)
    orders = _a_day_of_traffic(shop, sandbox, settings, dev_keys)
    _sign_in_to_the_admin(page, web)

    page.click("#dashboard-link")

    expect(page.locator("#dashboard")).to_be_visible()
    start = datetime.fromisoformat(page.locator("#dashboard").get_attribute("data-window-start")
                                   or "")
    shown = _shown(page)
    payments = Payment.objects.filter(created_at__gte=start)
    by_source = Counter(dict(payments.values_list("source").annotate(n=Count("pk"))))
    assert by_source == {"notify": 3, "return": 2, "query": 1}
    assert shown["payments.total"] == str(payments.count()) == "6"
    for source in ("notify", "return", "query", "bill"):
        assert shown[f"payments.source.{source}"] == str(by_source[source])
    count, p50, p95 = _percentiles(start)
    assert shown["time_to_paid.count"] == str(count) == "6"
    assert float(shown["time_to_paid.p50"]) == pytest.approx(p50, abs=0.001)
    assert float(shown["time_to_paid.p95"]) == pytest.approx(p95, abs=0.001)

    events = PaymentEvent.objects.filter(received_at__gte=start)
    states = Counter(dict(events.values_list("state").annotate(n=Count("pk"))))
    assert states["rejected"] == 2 and states["dead"] == 1
    for state in ("applied", "rejected", "dead", "received"):
        assert shown[f"events.state.{state}"] == str(states[state])
    assert shown["events.dead"] == str(PaymentEvent.objects.filter(state="dead").count())
    assert shown["events.waiting"] == str(PaymentEvent.objects.filter(state="received").count())
    expect(page.locator('[data-figure="events.dead"]')).to_have_text("1")

    checked = PaymentAttempt.objects.filter(last_checked_at__gte=start)
    assert shown["reconciliation.total"] == str(checked.count()) == "3"
    assert shown["reconciliation.paid"] == str(
        checked.filter(last_check_result="applied").count()) == "1"
    assert shown["reconciliation.unpaid"] == "1"
    assert shown["reconciliation.error"] == str(
        checked.filter(last_check_result__startswith="error").count()) == "1"
    assert shown["bills.findings"] == "1"

    gateway_failed = events.filter(last_error__startswith="Gateway")
    assert gateway_failed.filter(out_trade_no=orders["dead"]).exists()
    assert shown["errors.events"] == str(gateway_failed.count())
    assert shown["errors.reconciliation"] == "1"
    assert shown["errors.refunds"] == str(Refund.objects.exclude(last_error="").count())

    assert shown["refunds.state.succeeded"] == "1"
    assert shown["refunds.succeeded_amount"] == "5.00"
    assert shown["refunds.open"] == str(Refund.objects.filter(
        state__in=Refund.OPEN_STATES).count())
    page.screenshot(path=screenshots / "f_operator_dashboard.png", full_page=True)

    # The dead events' figure leads to them in the admin's list of events.
    page.click('a[data-figure="events.dead"]')
    page.wait_for_url(re.compile(r".*/admin/payment/paymentevent/\?state__exact=dead$"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(orders["dead"])
    page.screenshot(path=screenshots / "f_dead_events_from_dashboard.png", full_page=True)

    # A bar of rejected events leads to those events, in the hour the bar stands for.
    page.go_back()
    bar = page.locator('#section-events g[data-series="rejected"] a').first
    bar.click()
    page.wait_for_url(re.compile(r".*/admin/payment/paymentevent/\?state__exact=rejected&.*"))
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    assert {orders["rejected-0"], orders["rejected-1"]} <= set(re.findall(
        r"\d{20,}", page.locator("#result_list").inner_text()))
