"""A buyer in a real browser: sign in, order, pay on the sandbox cashier, come back."""
import re
import urllib.parse
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentEvent, RefusedRequest
from shop.models import OrderInfo, User
from tests.browser import Snap, sign_in
from tests.factories import sku_create
from tests.support import query_params

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers"),
]

def _order_and_open_cashier(page: Page, web: str, user: User) -> OrderInfo:
    """Order two of one product on the storefront, then press Pay with Alipay."""
    sku = sku_create(name="Desk lamp", price="48.80", stock=5)
    page.goto(f"{web}/")
    page.fill(f"#qty-{sku.pk}", "2")
    page.click("#place-order")
    page.wait_for_url(re.compile(r".*/my/orders/.*"))
    order = OrderInfo.objects.get(user=user)
    assert str(order.total_amount) == "97.60"
    row = page.locator(f"#order-{order.order_id}")
    expect(row.locator(".status")).to_have_text("Awaiting payment")
    row.get_by_role("button", name="Pay with Alipay").click()
    expect(page.locator("#pay-button")).to_be_visible()  # the sandbox's cashier page
    return order


def _order_status(order: OrderInfo) -> str:
    return OrderInfo.objects.get(pk=order.pk).status_name


def test_buyer_pays_and_sees_the_trade_number_on_return(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    user = sign_in(page, web, "lampbuyer")
    order = _order_and_open_cashier(page, web, user)

    page.click("#pay-button")

    page.wait_for_url(re.compile(r".*/pay_success\.html\?.*"))
    outcome = page.locator("#outcome")
    expect(outcome).to_have_attribute("data-state", "paid")
    payment = Payment.objects.get(order=order)
    expect(page.locator("#trade-no")).to_have_text(payment.trade_id)
    assert payment.trade_id == sandbox.trade(order.order_id)["trade_no"]
    assert _order_status(order) == "UNSEND"
    snap("a_pay_success_paid")

    page.click("#to-my-orders")
    status = page.locator(f"#order-{order.order_id} .status")
    expect(status).to_have_text("Paid - preparing shipment")
    expect(status).to_have_attribute("data-status", "UNSEND")
    expect(page.locator(f"#order-{order.order_id}").get_by_role("button")).to_have_count(0)
    snap("a_my_orders_paid")


def test_order_list_turns_paid_by_itself_when_the_return_is_lost(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    # No redirect back, and the notification late enough to arrive while the list is open.
    sandbox.set_faults(drop_return=True, notify_delay_s=4)
    user = sign_in(page, web, "tabcloser")
    order = _order_and_open_cashier(page, web, user)

    page.click("#pay-button")
    expect(page.locator("#payment-done")).to_be_visible()  # the sandbox's own "done" page

    page.goto(f"{web}/my/orders/")
    status = page.locator(f"#order-{order.order_id} .status")
    expect(status).to_have_text("Awaiting payment")
    page.evaluate("window.notReloaded = true")

    expect(status).to_have_text("Paid - preparing shipment", timeout=20_000)
    assert page.evaluate("window.notReloaded") is True
    assert Payment.objects.get(order=order).source == "notify"
    snap("b_my_orders_paid_by_notification")


def _tamper_sign(url: str) -> str:
    """The same return address with one character of its signature changed."""
    parts = urllib.parse.urlsplit(url)
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    tampered = []
    for key, value in params:
        if key == "sign":
            value = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
        tampered.append((key, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(tampered)))


def test_tampered_return_is_rejected_and_leaves_the_order_unpaid(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    sandbox.set_faults(notify_drop=True)  # only the tampered return reaches the shop
    user = sign_in(page, web, "tamperer")
    order = _order_and_open_cashier(page, web, user)
    genuine: list[str] = []

    def tamper(route: Route) -> Any:
        # The cashier answers Pay with a redirect to the return address: change it in flight.
        response = route.fetch(max_redirects=0)
        location = response.headers.get("location", "")
        assert "/pay_success.html?" in location, response.status
        genuine.append(location)
        return route.fulfill(status=302, headers={"Location": _tamper_sign(location)})

    page.route(re.compile(r".*/cashier/.*/pay$"), tamper)
    page.click("#pay-button")

    expect(page.locator("#outcome")).to_have_attribute("data-state", "rejected")
    expect(page.locator("#rejected-message")).to_contain_text(
        "This page could not read Alipay's confirmation")
    assert genuine and page.url != genuine[0]
    assert query_params(page.url)["sign"] != query_params(genuine[0])["sign"]
    # Not Alipay's: counted apart, never part of the order's payment history.
    assert not PaymentEvent.objects.filter(out_trade_no=order.order_id).exists()
    refused = RefusedRequest.objects.get(out_trade_no=order.order_id, source="return")
    assert "signature" in refused.reason
    assert _order_status(order) == "UNPAID"
    assert not Payment.objects.filter(order=order).exists()
    snap("c_pay_success_rejected")


def test_slow_confirmation_shows_a_spinner_then_the_payment(
    page: Page, web: str, sandbox: SandboxControl, settings: Any, snap: Snap
) -> None:
    settings.RETURN_WAIT_SECONDS = 0  # the shop answers "processing" at once
    # Without the notification the return itself must be confirmed by the workers; a
    # notification that came first would have paid the order before the buyer is back.
    sandbox.set_faults(notify_drop=True)
    user = sign_in(page, web, "patientbuyer")
    order = _order_and_open_cashier(page, web, user)

    page.click("#pay-button")

    outcome = page.locator("#outcome")
    expect(outcome).to_have_attribute("data-state", "processing")
    expect(page.locator("#spinner")).to_be_visible()
    snap("d_pay_success_processing")
    expect(outcome).to_have_attribute("data-state", "paid")
    expect(page.locator("#trade-no")).to_have_text(Payment.objects.get(order=order).trade_id)


def test_buyer_is_told_politely_when_alipay_stays_silent(
    page: Page, web: str, sandbox: SandboxControl, settings: Any, snap: Snap
) -> None:
    settings.RETURN_WAIT_SECONDS = 0
    user = sign_in(page, web, "waitingbuyer")
    order = _order_and_open_cashier(page, web, user)
    # Alipay's query API is down and the notification lost: nothing can confirm the payment.
    sandbox.set_faults(notify_drop=True, error_rate=1.0, error_kind="http500",
                       methods=["alipay.trade.query"])
    # Two minutes of patience in real life; a few seconds here.
    page.route(re.compile(r".*/pay_success\.js$"), _shorter_patience)

    page.click("#pay-button")

    outcome = page.locator("#outcome")
    expect(outcome).to_have_attribute("data-state", "processing")
    expect(outcome).to_have_attribute("data-state", "gave-up", timeout=20_000)
    expect(page.locator("#gave-up-message")).to_contain_text("we'll update your order")
    assert _order_status(order) == "UNPAID"
    snap("e_pay_success_gave_up")


def _shorter_patience(route: Route) -> None:
    response = route.fetch()
    script = response.text()
    assert "outcome.dataset.giveUpSeconds || 120" in script
    route.fulfill(response=response,
                  body=script.replace("outcome.dataset.giveUpSeconds || 120", "5"))
