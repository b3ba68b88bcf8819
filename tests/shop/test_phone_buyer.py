"""A buyer on a phone (an iPhone's user agent, 390x844, touch): the shop sends them to Alipay's
mobile cashier, they pay there (or leave it) and land on their order. A desktop buyer still
gets the desktop cashier. Real Chromium, the sandbox over HTTP, real workers."""
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentAttempt
from shop.models import OrderInfo, User
from tests.browser import SCREENSHOTS, sign_in
from tests.factories import sku_create
from tests.support import query_params

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers", "reconciliation_out_of_the_way"),
]

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


@pytest.fixture
def phone(browser: Any) -> Iterator[Page]:
    context = browser.new_context(user_agent=IPHONE, viewport={"width": 390, "height": 844},
                                  device_scale_factor=3, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _shot(page: Page, name: str) -> None:
    """A screenshot kept with the tests' artifacts; the page no wider than the screen."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    kind = "phone" if page.viewport_size and page.viewport_size["width"] < 500 else "desktop"
    page.screenshot(path=str(SCREENSHOTS / f"{kind}_{name}.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size["width"] if page.viewport_size else 0
    assert width <= viewport, f"{name}: {width} px wide in a {viewport} px viewport"


def _order_and_press_pay(page: Page, web: str, user: User) -> OrderInfo:
    sku = sku_create(name="Desk lamp", price="48.80", stock=5)
    page.goto(f"{web}/")
    page.fill(f"#qty-{sku.pk}", "1")
    page.click("#place-order")
    page.wait_for_url(re.compile(r".*/my/orders/.*"))
    order = OrderInfo.objects.get(user=user)
    page.goto(f"{web}/my/orders/{order.order_id}/")
    _shot(page, "a_order")
    page.click("#pay-now")
    return order


def test_a_phone_buyer_pays_in_the_mobile_cashier_and_lands_on_the_order_paid(
    phone: Page, web: str, sandbox: SandboxControl
) -> None:
    user = sign_in(phone, web, "phonebuyer")
    order = _order_and_press_pay(phone, web, user)

    expect(phone.locator("body[data-cashier='wap']")).to_be_visible()
    expect(phone.locator("#cashier-title")).to_have_text("Alipay mobile cashier")
    _shot(phone, "b_mobile_cashier")
    assert PaymentAttempt.objects.get(order=order).channel == "wap"
    phone.click("#pay-button")

    phone.wait_for_url(re.compile(r".*/pay_success\.html\?.*"))
    assert query_params(phone.url)["method"] == "alipay.trade.wap.pay.return"
    expect(phone.locator("#outcome")).to_have_attribute("data-state", "paid")
    payment = Payment.objects.get(order=order)
    assert payment.trade_id == sandbox.trade(order.order_id)["trade_no"]
    phone.goto(f"{web}/my/orders/{order.order_id}/")
    expect(phone.locator("#order-status")).to_have_text("Paid - preparing shipment")
    expect(phone.locator("#trade-no")).to_have_text(payment.trade_id)
    _shot(phone, "c_order_paid")


def test_leaving_the_mobile_cashier_returns_to_the_order_unpaid(
    phone: Page, web: str, sandbox: SandboxControl
) -> None:
    user = sign_in(phone, web, "phoneleaver")
    order = _order_and_press_pay(phone, web, user)
    expect(phone.locator("body[data-cashier='wap']")).to_be_visible()

    phone.click("#quit-to-shop")

    phone.wait_for_url(f"{web}/my/orders/{order.order_id}/")
    expect(phone.locator("#order-status")).to_have_text("Awaiting payment")
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID
    assert not Payment.objects.filter(order=order).exists()


def test_a_desktop_buyer_gets_the_desktop_cashier(page: Page, web: str,
                                                  sandbox: SandboxControl) -> None:
    user = sign_in(page, web, "deskbuyer")
    order = _order_and_press_pay(page, web, user)

    expect(page.locator("body[data-cashier='page']")).to_be_visible()
    expect(page.locator("#qr-panel")).to_be_visible()
    assert PaymentAttempt.objects.get(order=order).channel == "page"
