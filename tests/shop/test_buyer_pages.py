"""The buyer's pages at desktop and phone width: sign-up, ordering with a confirmation, the
statuses in words, the sandbox's cashier and cancel pages, and the return page opened bare.

`snap` (tests/e2e/conftest.py) asserts that each page fits a 1280 px and a 390 px viewport
and saves both screenshots.
"""
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, expect

from alipay_sandbox.client import SandboxControl
from shop import services
from shop.models import OrderInfo, User
from shop.pages import STATUS_WORDS
from tests.browser import PASSWORD, Snap, sign_in
from tests.factories import UserFactory, order_with_goods, sku_create

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers"),
]

def _visible_text(page: Page) -> str:
    return page.inner_text("main")


def test_sign_up_shows_the_rules_and_the_api_messages_then_signs_in(
    page: Page, web: str, snap: Snap
) -> None:
    UserFactory(username="lampfan")
    page.goto(f"{web}/login/")
    snap("f_sign_in")

    page.click("#to-sign-up")
    expect(page).to_have_url(f"{web}/signup/")
    expect(page.locator("#username-rule")).to_have_text(services.USERNAME_RULE)
    expect(page.locator("#password-rules")).to_contain_text(
        "Your password must contain at least 8 characters.")
    snap("g_sign_up")

    error = page.locator("#signup-error")
    refusals = [
        ("x!", PASSWORD, services.USERNAME_RULE),
        ("LampFan", PASSWORD, "This username is taken."),
        ("newbuyer", "short", "This password is too short. It must contain at least 8 "
                              "characters."),
        ("newbuyer", "password1", "This password is too common."),
        ("", PASSWORD, "Username: This field may not be blank."),
    ]
    for username, password, message in refusals:
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("#sign-up")
        expect(error).to_have_text(message)
        expect(error).to_have_class(re.compile(r"\berror\b"))
        if message == "This username is taken.":
            snap("h_sign_up_username_taken")
    assert list(User.objects.values_list("username", flat=True)) == ["lampfan"]

    page.fill("#id_username", "newbuyer")
    page.fill("#id_password", PASSWORD)
    page.click("#sign-up")

    page.wait_for_url(f"{web}/")
    expect(page.locator("#signed-in-as")).to_have_text("newbuyer")
    expect(page.locator("#place-order")).to_be_visible()
    assert User.objects.get(username="newbuyer").check_password(PASSWORD)
    page.goto(f"{web}/signup/")  # nothing to sign up for any more
    expect(page).to_have_url(f"{web}/")


def test_sign_up_from_a_page_that_needs_an_account_returns_to_it(page: Page, web: str) -> None:
    page.goto(f"{web}/signup/?next=https://elsewhere.example/")
    expect(page.locator("#signup-form input[name=next]")).to_have_value("")

    page.goto(f"{web}/my/orders/")
    expect(page).to_have_url(f"{web}/login/?next=/my/orders/")
    page.click("#to-sign-up")
    expect(page).to_have_url(f"{web}/signup/?next=/my/orders/")
    page.fill("#id_username", "deeplinker")
    page.fill("#id_password", PASSWORD)
    page.click("#sign-up")

    page.wait_for_url(f"{web}/my/orders/")
    expect(page.locator("#signed-in-as")).to_have_text("deeplinker")
    expect(page.locator("#no-orders")).to_be_visible()


def test_order_is_confirmed_with_its_items_and_total_and_paid_at_once(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    user = sign_in(page, web, "phonebuyer")
    lamp = sku_create(name="Desk lamp", price="48.80", stock=5)
    bulbs = sku_create(name="Spare bulb, warm white 2700 K", price="6.50", stock=20)
    page.goto(f"{web}/")
    snap("i_storefront")

    message = page.locator("#order-message")
    page.click("#place-order")
    expect(message).to_have_text("Choose a quantity for at least one product.")
    expect(message).to_have_class(re.compile(r"\berror\b"))
    snap("j_storefront_choose_a_quantity")
    page.fill(f"#qty-{lamp.pk}", "2")
    expect(message).to_be_hidden()  # the error no longer applies
    page.fill(f"#qty-{bulbs.pk}", "3")
    page.click("#place-order")

    page.wait_for_url(re.compile(r".*/my/orders/\?placed=\d+$"))
    order = OrderInfo.objects.get(user=user)
    assert str(order.total_amount) == "117.10"
    expect(page.locator("#order-placed")).to_be_visible()
    expect(page.locator("#placed-order-id")).to_have_text(order.order_id)
    expect(page.locator("#placed-total")).to_have_text("¥ 117.10")
    items = ["Desk lamp × 2", "Spare bulb, warm white 2700 K × 3"]
    assert sorted(page.locator("#placed-items li").all_inner_texts()) == items
    deadline = timezone.localtime(
        order.created_at + timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS))
    expect(page.locator("#placed-pay-by")).to_contain_text(deadline.strftime("%Y-%m-%d %H:%M"))
    row = page.locator(f"#order-{order.order_id}")
    expect(row.locator(".status")).to_have_text("Awaiting payment")
    assert sorted(row.locator(".items li").all_inner_texts()) == items
    assert "UNPAID" not in _visible_text(page)
    snap("k_my_orders_order_placed")

    page.click("#pay-now")
    expect(page.locator("#pay-button")).to_be_visible()  # the sandbox's cashier
    expect(page.locator("#total-amount")).to_have_text("¥ 117.10")
    expect(page.locator("#trade-status")).to_have_text("Waiting for payment")
    snap("l_sandbox_cashier")
    page.click("#pay-button")

    page.wait_for_url(re.compile(r".*/pay_success\.html\?.*"))
    expect(page.locator("#outcome")).to_have_attribute("data-state", "paid")
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNSEND
    page.click("#to-my-orders")
    expect(row.locator(".status")).to_have_text("Paid - preparing shipment")
    expect(row.get_by_role("button")).to_have_count(0)


def test_cancel_at_the_cashier_leads_back_to_the_order(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    user = sign_in(page, web, "secondthoughts")
    lamp = sku_create(name="Desk lamp", price="48.80", stock=5)
    page.goto(f"{web}/")
    page.fill(f"#qty-{lamp.pk}", "1")
    page.click("#place-order")
    page.wait_for_url(re.compile(r".*/my/orders/\?placed=\d+$"))
    order = OrderInfo.objects.get(user=user)
    page.locator(f"#order-{order.order_id}").get_by_role("button", name="Pay with Alipay").click()

    page.click("#cancel-button")

    expect(page.locator("#payment-cancelled")).to_be_visible()
    back = page.locator("#back-to-shop")
    # The desktop cashier has no quit_url: it goes back through the return page, which sends
    # the buyer on to the order.
    expect(back).to_have_attribute(
        "href", f"{web}/pay_success.html?out_trade_no={order.order_id}")
    expect(page.locator("#back-to-cashier")).to_be_visible()
    snap("m_sandbox_cancelled")
    back.click()
    page.wait_for_url(f"{web}/my/orders/{order.order_id}/")
    expect(page.locator("#signed-in-as")).to_have_text("secondthoughts")
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID
    assert sandbox.trade(order.order_id)["status"] == "WAIT_BUYER_PAY"


def test_my_orders_names_every_status_in_words_and_shows_new_orders_with_their_items(
    page: Page, web: str, snap: Snap
) -> None:
    user = sign_in(page, web, "longtimebuyer")
    lamp = sku_create(name="Desk lamp", price="48.80", stock=50)
    orders = {}
    for status in OrderInfo.Status:
        orders[status.name] = order_with_goods([(lamp, 1)], user=user, status=status).order_id

    page.goto(f"{web}/my/orders/")

    for name, order_id in orders.items():
        status = page.locator(f"#order-{order_id} .status")
        expect(status).to_have_text(STATUS_WORDS[name])
        expect(status).to_have_attribute("data-status", name)
        buttons = 1 if name == "UNPAID" else 0
        expect(page.locator(f"#order-{order_id}").get_by_role("button")).to_have_count(buttons)
    text = _visible_text(page)
    assert not [name for name in orders if name in text]  # no codes, no footnote explaining them
    snap("n_my_orders_every_status")

    # Placed elsewhere (another tab, the API): the list shows it within a refresh.
    newest = order_with_goods([(lamp, 3)], user=user)
    row = page.locator(f"#order-{newest.order_id}")
    expect(row.locator(".status")).to_have_text("Awaiting payment", timeout=10_000)
    expect(row.locator(".items li")).to_have_text(["Desk lamp × 3"])
    placed = timezone.localtime(newest.created_at).strftime("%Y-%m-%d %H:%M")
    expect(row.locator("td").nth(1)).to_have_text(placed)
    expect(row.get_by_role("button", name="Pay with Alipay")).to_be_visible()


def test_only_the_buyers_own_new_order_is_confirmed(page: Page, web: str) -> None:
    lamp = sku_create(name="Desk lamp", price="48.80", stock=5)
    foreign = order_with_goods([(lamp, 1)])  # another buyer's
    user = sign_in(page, web, "curious")
    own = order_with_goods([(lamp, 2)], user=user)
    page.goto(f"{web}/my/orders/?placed={own.order_id}")
    expect(page.locator("#placed-order-id")).to_have_text(own.order_id)

    for placed in (foreign.order_id, "%00", "x" * 500):
        response = page.goto(f"{web}/my/orders/?placed={placed}")
        assert response is not None and response.status == 200
        expect(page.locator("h1")).to_have_text("My orders")
        expect(page.locator("#order-placed")).to_have_count(0)
    assert foreign.order_id not in _visible_text(page)


def test_return_page_opened_without_parameters_has_nothing_to_confirm(
    page: Page, web: str, snap: Snap
) -> None:
    page.goto(f"{web}/pay_success.html")

    outcome = page.locator("#outcome")
    expect(outcome).to_have_attribute("data-state", "nothing")
    expect(page.get_by_role("heading", name="Nothing to confirm here")).to_be_visible()
    expect(page.locator("#to-my-orders")).to_have_attribute("href", "/my/orders/")
    page.wait_for_load_state("networkidle")
    expect(outcome).to_have_attribute("data-state", "nothing")
    text = _visible_text(page)
    assert "not confirmed" not in text and "charged" not in text
    snap("o_pay_success_nothing_to_confirm")
