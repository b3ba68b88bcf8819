"""The buyer's order page (/my/orders/<id>/): the order's part rendered by the shop, its payment
part read by the page's script from the payment status; and the return page sending a buyer
back from the cashier's cancel to the order."""
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from alipay_sandbox.client import SandboxControl
from payment.links import payment_link_create
from payment.models import PaymentEvent, Refund
from payment.reconciliation.expiry import order_expire
from payment.refunds.requests import refund_request
from shop.models import SKU, OrderInfo
from shop.pages import STATUS_DETAIL_WORDS, STATUS_WORDS
from tests.browser import Snap, sign_in
from tests.factories import UserFactory, order_with_goods, sku_create
from tests.support import wait_for

WECHAT = ("Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 XWEB/1160065 MMWEBSDK/20231202 "
          "MicroMessenger/8.0.47.2560(0x28002F30) WeChat/arm64 Weixin NetType/WIFI "
          "Language/zh_CN ABI/arm64")


@pytest.mark.django_db
def test_order_page_shows_the_items_and_the_pay_by_time_with_its_zone(
    client: Client, settings: Any
) -> None:
    settings.ORDER_PAY_TIMEOUT_SECONDS = 30 * 60
    order = order_with_goods([(sku_create(name="Desk lamp", price="45.00"), 2),
                              (sku_create(name="Bulb", price="3.50"), 4)])
    OrderInfo.objects.filter(pk=order.pk).update(
        created_at=datetime(2024, 5, 1, 6, 0, tzinfo=UTC))
    client.force_login(order.user)

    response = client.get(f"/my/orders/{order.order_id}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Desk lamp" in page and "Bulb" in page and "¥ 104.00" in page
    # 06:30 UTC is 14:30 in the shop's zone, named with its offset.
    assert "2024-05-01 14:30" in page
    assert "(Asia/Shanghai time, UTC+0800)" in page
    assert 'data-deadline="2024-05-01T14:30:00+08:00"' in page
    assert STATUS_WORDS["UNPAID"] in page
    assert 'id="pay-now"' in page and 'id="cancel-order"' in page
    assert f'data-cancel-url="/orders/{order.order_id}/cancel/"' in page


@pytest.mark.django_db
def test_order_page_is_the_buyers_own(client: Client) -> None:
    order = order_with_goods([(sku_create(), 1)])

    anonymous = client.get(f"/my/orders/{order.order_id}/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    client.force_login(UserFactory())
    assert client.get(f"/my/orders/{order.order_id}/").status_code == 404


@pytest.mark.django_db
def test_my_orders_links_each_order_to_its_page(client: Client) -> None:
    order = order_with_goods([(sku_create(), 1)])
    client.force_login(order.user)

    page = client.get("/my/orders/").content.decode()

    assert f'href="/my/orders/{order.order_id}/"' in page


@pytest.mark.django_db
def test_back_from_the_cashier_without_a_signature_goes_to_the_order(client: Client) -> None:
    response = client.get("/pay_success.html", {"out_trade_no": "20240501143000000000000000007"})

    assert response.status_code == 302
    assert response["Location"] == "/my/orders/20240501143000000000000000007/"
    # Alipay's own return (signed) is still confirmed on the page.
    signed = client.get("/pay_success.html", {"out_trade_no": "1", "sign": "x"})
    assert signed.status_code == 200


@pytest.mark.django_db
def test_the_favicon_is_linked_and_served(client: Client) -> None:
    page = client.get("/").content.decode()

    assert 'rel="icon" href="/static/shop/favicon.svg"' in page
    assert client.get("/favicon.ico")["Location"] == "/static/shop/favicon.svg"
    assert Path("shop/static/shop/favicon.svg").read_text().startswith("<svg")


# -- in the browser ------------------------------------------------------------------------


def _order_page(page: Page, web: str, order: OrderInfo) -> None:
    page.goto(f"{web}/my/orders/{order.order_id}/")
    expect(page.locator("#order-id")).to_have_text(order.order_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers")
def test_cancel_on_the_order_page_closes_the_trade_at_alipay(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    user = sign_in(page, web, "changedmind")
    sku = sku_create(name="Kettle", price="88.00", stock=5)
    order = order_with_goods([(sku, 1)], user=user)
    url = payment_link_create(user=user, order_id=order.order_id)
    page.request.get(url)  # the cashier was opened: the trade exists at Alipay, unpaid
    assert sandbox.trade(order.order_id)["status"] == "WAIT_BUYER_PAY"
    _order_page(page, web, order)
    expect(page.locator("#countdown")).to_contain_text(" s left.")
    snap("o_order_unpaid")

    page.click("#cancel-order")
    page.click("#cancel-yes")

    expect(page.locator("#order-status")).to_have_text(STATUS_DETAIL_WORDS["CANCELED_BY_BUYER"])
    expect(page.locator("#closed-reason")).to_contain_text("You canceled this order")
    expect(page.locator("#unpaid")).to_be_hidden()
    assert sandbox.trade(order.order_id)["status"] == "TRADE_CLOSED"
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.CANCELED
    assert SKU.objects.get(pk=sku.pk).stock == 5
    snap("p_order_canceled")
    page.goto(f"{web}/my/orders/")
    expect(page.locator(f"#order-{order.order_id} .status")).to_have_text(
        STATUS_DETAIL_WORDS["CANCELED_BY_BUYER"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers")
def test_an_expired_order_says_it_expired_unpaid(page: Page, web: str) -> None:
    user = sign_in(page, web, "toolate")
    order = order_with_goods([(sku_create(), 1)], user=user)
    OrderInfo.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(hours=2))
    order_expire(order_id=order.order_id)

    _order_page(page, web, order)

    expect(page.locator("#order-status")).to_have_text(STATUS_DETAIL_WORDS["EXPIRED"])
    expect(page.locator("#closed-reason")).to_contain_text("expired unpaid")
    assert PaymentEvent.objects.filter(order_id=order.order_id, source="expiry").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers")
def test_order_page_shows_the_payment_and_its_refund(
    page: Page, web: str, sandbox: SandboxControl, snap: Snap
) -> None:
    user = sign_in(page, web, "refundee")
    order = order_with_goods([(sku_create(name="Chair", price="45.00"), 1)], user=user)
    paid = sandbox.pay(payment_link_create(user=user, order_id=order.order_id))
    wait_for(lambda: OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNSEND, 20)
    refund = refund_request(order_id=order.order_id, amount=Decimal("10.00"),
                            reason="Scratched leg", requested_by=None).refund
    wait_for(lambda: Refund.objects.get(pk=refund.pk).state == Refund.State.SUCCEEDED, 30)

    _order_page(page, web, order)

    expect(page.locator("#trade-no")).to_have_text(paid["trade_no"])
    expect(page.locator("#paid-amount")).to_have_text("¥ 45.00")
    expect(page.locator("#paid-at")).to_contain_text(timezone.localdate().isoformat())
    row = page.locator("#refund-0")
    expect(row.locator(".amount")).to_have_text("¥ 10.00")
    expect(row.locator(".refund-state")).to_have_text("Refunded")
    expect(row.locator(".reason")).to_have_text("Scratched leg")
    expect(page.locator("#order-status")).to_have_text(STATUS_DETAIL_WORDS["PARTLY_REFUNDED"])
    expect(page.locator("#unpaid")).to_be_hidden()
    snap("q_order_partly_refunded")
    page.goto(f"{web}/my/orders/")
    expect(page.locator(f"#order-{order.order_id} .status")).to_have_text(
        STATUS_DETAIL_WORDS["PARTLY_REFUNDED"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers", "reconciliation_out_of_the_way")
def test_in_wechat_pay_shows_how_to_open_the_browser(
    browser: Browser, web: str, screenshots: Path
) -> None:
    context = browser.new_context(user_agent=WECHAT, viewport={"width": 390, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        user = sign_in(page, web, "wechatbuyer")
        order = order_with_goods([(sku_create(), 1)], user=user)
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        _order_page(page, web, order)
        expect(page.locator("#wechat-guide")).to_be_hidden()

        page.click("#pay-now")

        guide = page.locator("#wechat-guide")
        expect(guide).to_be_visible()
        expect(guide).to_contain_text("open this page in your browser")
        page.screenshot(path=screenshots / "r_order_wechat_390.png", full_page=True)
        assert page.url == f"{web}/my/orders/{order.order_id}/"
        assert not any(u.endswith(f"/orders/{order.order_id}/payment/") for u in asked)
        assert not PaymentEvent.objects.filter(order_id=order.order_id).exists()

        page.goto(f"{web}/my/orders/")  # the same from My orders
        page.click(f"#pay-{order.order_id}")
        expect(page.locator("#wechat-guide")).to_be_visible()
        page.screenshot(path=screenshots / "s_my_orders_wechat_390.png", full_page=True)
    finally:
        context.close()
