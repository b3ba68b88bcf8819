"""Alipay's two cashiers: the desktop one (page.pay) and the mobile web one (wap.pay), their
product codes, returns, ways back to the shop, and wap trades that exist only once confirmed."""

from __future__ import annotations

import re
from html import unescape
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
import requests
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.client import SandboxError
from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, verify_rsa2
from alipay_sandbox.tests.support import (
    NotifyReceiver,
    browser_pay,
    cn_time,
    form_action,
    open_cashier,
    session,
    wait_for,
)

SHOP = "http://shop.test"
RETURN_URL = f"{SHOP}/pay_success.html"
QUIT_URL = f"{SHOP}/my/orders/?from=alipay"


def wap_query(
    alipay: AliPay,
    out_trade_no: str,
    amount: str = "19.90",
    *,
    quit_url: str | None = QUIT_URL,
    notify_url: str | None = None,
    **biz: Any,
) -> str:
    extra: dict[str, Any] = {"product_code": "QUICK_WAP_WAY", **biz}
    if quit_url is not None:
        extra["quit_url"] = quit_url
    return alipay.api_alipay_trade_wap_pay(
        "Phone case", out_trade_no, amount, return_url=RETURN_URL, notify_url=notify_url, **extra
    )


def page_query(alipay: AliPay, out_trade_no: str, amount: str = "19.90", **biz: Any) -> str:
    return alipay.api_alipay_trade_page_pay(
        "Desk lamp", out_trade_no, amount, return_url=RETURN_URL, **biz
    )


def links(html: str) -> dict[str, str]:
    return {
        name: unescape(href) for name, href in re.findall(r'<a id="([\w-]+)" href="([^"]*)"', html)
    }


def marker(html: str) -> str | None:
    found = re.search(r'<body data-cashier="(\w+)"', html)
    return found.group(1) if found else None


def press(sbx: SandboxProcess, http: requests.Session, html: str, button: str) -> requests.Response:
    return http.post(
        urljoin(sbx.base_url, form_action(html, button)), allow_redirects=False, timeout=10
    )


def query_status(alipay: AliPay, out_trade_no: str) -> str:
    """``trade_status``, or the sub_code of a refusal."""
    result = alipay.api_alipay_trade_query(out_trade_no=out_trade_no)
    return result["trade_status"] if result["code"] == "10000" else result["sub_code"]


def check_signed(pub: rsa.RSAPublicKey, params: dict[str, str]) -> None:
    assert verify_rsa2(pub, string_to_sign(params, exclude=("sign", "sign_type")), params["sign"])


# -- 1. the desktop cashier ------------------------------------------------------------------
def test_page_pay_shows_the_desktop_cashier_with_qr_and_login_panels(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    html = open_cashier(alipay, page_query(alipay, "desk-1"))
    assert marker(html) == "page"
    assert '<h1 id="cashier-title">Alipay desktop cashier</h1>' in html
    assert 'id="qr-panel"' in html and '<svg id="qr-code"' in html
    assert 'id="login-panel"' in html and 'id="account"' in html
    assert 'id="pay-button"' in html and 'id="cancel-button"' in html
    assert 'id="quit-to-shop"' not in html and 'id="confirm-button"' not in html
    assert '<p class="amount" id="total-amount">¥ 19.90</p>' in html
    # page.pay creates the trade when the cashier opens (unchanged).
    assert query_status(alipay, "desk-1") == "WAIT_BUYER_PAY"


# -- 2. the mobile cashier -------------------------------------------------------------------
def test_wap_pay_shows_the_mobile_cashier_with_a_way_back_to_quit_url(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    http = session()
    html = open_cashier(alipay, wap_query(alipay, "wap-1"), http)
    assert marker(html) == "wap"
    assert '<h1 id="cashier-title">Alipay mobile cashier</h1>' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert links(html)["quit-to-shop"] == QUIT_URL
    assert "Open Alipay" in html and 'id="confirm-button"' in html
    assert 'id="qr-panel"' not in html

    paid = press(sbx, http, html, "pay-button")
    assert paid.status_code == 302
    params = dict(parse_qsl(urlsplit(paid.headers["Location"]).query))
    assert paid.headers["Location"].startswith(RETURN_URL + "?")
    assert params["method"] == "alipay.trade.wap.pay.return"
    check_signed(alipay_public_key, params)
    assert query_status(alipay, "wap-1") == "TRADE_SUCCESS"


def test_wap_cashier_without_quit_url_leads_back_through_the_return_page(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    html = open_cashier(alipay, wap_query(alipay, "wap-2", quit_url=None))
    assert links(html)["quit-to-shop"] == f"{RETURN_URL}?out_trade_no=wap-2"


def test_quit_url_that_is_not_a_web_address_gives_no_link(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    html = open_cashier(alipay, wap_query(alipay, "wap-3", quit_url="javascript:alert(1)"))
    assert "javascript:" not in html
    assert links(html)["quit-to-shop"] == f"{RETURN_URL}?out_trade_no=wap-3"


# -- 3. product codes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "product_code"),
    [
        ("wap", None),  # python-alipay-sdk's default QUICK_WAP_PAY, which Alipay does not know
        ("wap", ""),
        ("wap", "FAST_INSTANT_TRADE_PAY"),
        ("page", "QUICK_WAP_WAY"),
        ("page", ""),
    ],
)
def test_a_link_without_its_cashiers_product_code_is_refused(
    sbx: SandboxProcess, alipay: AliPay, method: str, product_code: str | None
) -> None:
    biz = {} if product_code is None else {"product_code": product_code}
    if method == "wap":
        query = alipay.api_alipay_trade_wap_pay("Case", "code-1", "1.00", **biz)
        expected = "QUICK_WAP_WAY"
    else:
        query = alipay.api_alipay_trade_page_pay("Lamp", "code-1", "1.00", **biz)
        expected = "FAST_INSTANT_TRADE_PAY"
    response = session().get(sbx.gateway + "?" + query, timeout=10)
    assert response.status_code == 400
    assert '<span class="code" id="error-sub-code">ACQ.INVALID_PARAMETER</span>' in response.text
    assert f"product_code 应为 {expected}" in response.text
    assert 'id="pay-button"' not in response.text

    with pytest.raises(SandboxError) as refused:
        sbx.control.pay(sbx.gateway + "?" + query)
    assert refused.value.status == 400
    assert refused.value.payload["code"] == "40004"
    assert refused.value.payload["sub_code"] == "ACQ.INVALID_PARAMETER"
    with pytest.raises(SandboxError) as missing:
        sbx.control.trade("code-1")
    assert missing.value.status == 404  # nothing was created


# -- 4. returns carry the link's method, browser and control API alike -----------------------
@pytest.mark.parametrize("kind", ["page", "wap"])
def test_control_pay_returns_like_the_cashier_for_both_kinds_of_link(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
    kind: str,
) -> None:
    method = f"alipay.trade.{kind}.pay"
    build = wap_query if kind == "wap" else page_query
    by_browser, by_control = f"{kind}-browser", f"{kind}-control"

    response, browser_params = browser_pay(sbx, alipay, build(alipay, by_browser))
    assert response.status_code == 302
    url = sbx.gateway + "?" + build(alipay, by_control, notify_url=receiver.url)
    paid = sbx.control.pay(url)
    assert paid["newly_paid"] is True
    control_params = dict(parse_qsl(urlsplit(paid["return_url"]).query))

    for params in (browser_params, control_params):
        assert params["method"] == method + ".return"
        check_signed(alipay_public_key, params)
    assert set(browser_params) == set(control_params)
    again = sbx.control.pay(url)
    assert again["newly_paid"] is False and again["return_url"] == paid["return_url"]
    trade = sbx.control.trade(by_control)
    assert trade["method"] == method and trade["status"] == "TRADE_SUCCESS"
    notes = sbx.control.wait_notifications(by_control)
    assert [n["trade_status"] for n in notes] == ["TRADE_SUCCESS"]
    assert query_status(alipay, by_control) == "TRADE_SUCCESS"


# -- 5. cancelling ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "back"),
    [("wap", QUIT_URL), ("page", f"{RETURN_URL}?out_trade_no=cancel-1")],
)
def test_back_to_the_shop_after_cancelling(
    sbx: SandboxProcess, alipay: AliPay, kind: str, back: str
) -> None:
    http = session()
    query = wap_query(alipay, "cancel-1") if kind == "wap" else page_query(alipay, "cancel-1")
    html = open_cashier(alipay, query, http)
    cancelled = press(sbx, http, html, "cancel-button")
    assert cancelled.status_code == 200
    assert 'id="payment-cancelled"' in cancelled.text
    assert marker(cancelled.text) == kind
    assert links(cancelled.text)["back-to-shop"] == back
    assert links(cancelled.text)["back-to-cashier"] == "/cashier/cancel-1"
    # The cashier stays open to pay later.
    again = http.get(urljoin(sbx.base_url, "/cashier/cancel-1"), timeout=10)
    assert marker(again.text) == kind and 'id="pay-button"' in again.text


# -- 6. a wap trade exists once the buyer confirms -------------------------------------------
def test_wap_trade_is_unknown_to_query_and_close_until_the_buyer_confirms(
    sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver
) -> None:
    http = session()
    html = open_cashier(alipay, wap_query(alipay, "confirm-1", notify_url=receiver.url), http)
    assert query_status(alipay, "confirm-1") == "ACQ.TRADE_NOT_EXIST"
    closed = alipay.api_alipay_trade_close(out_trade_no="confirm-1")
    assert closed["code"] == "40004" and closed["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    refund = alipay.api_alipay_trade_refund("1.00", out_trade_no="confirm-1")
    assert refund["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    assert sbx.control.trade("confirm-1")["confirmed"] == 0

    confirmed = press(sbx, http, html, "confirm-button")
    assert confirmed.status_code == 200
    assert 'id="logged-in"' in confirmed.text and 'id="confirm-button"' not in confirmed.text
    assert query_status(alipay, "confirm-1") == "WAIT_BUYER_PAY"
    close = alipay.api_alipay_trade_close(out_trade_no="confirm-1")
    assert close == {"code": "10000", "msg": "Success", "out_trade_no": "confirm-1"}
    notes = sbx.control.wait_notifications("confirm-1")
    assert [n["trade_status"] for n in notes] == ["TRADE_CLOSED"]


def test_control_confirm_creates_the_wap_trade_without_paying(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    url = sbx.gateway + "?" + wap_query(alipay, "confirm-2")
    assert sbx.control.confirm(url) == {
        "out_trade_no": "confirm-2",
        "method": "alipay.trade.wap.pay",
        "status": "WAIT_BUYER_PAY",
        "confirmed": True,
    }
    assert query_status(alipay, "confirm-2") == "WAIT_BUYER_PAY"
    assert sbx.control.confirm(out_trade_no="confirm-2")["confirmed"] is True
    # A page link needs no confirmation: opening it created the trade.
    page_url = sbx.gateway + "?" + page_query(alipay, "confirm-3")
    assert sbx.control.confirm(page_url)["confirmed"] is True


def test_an_unconfirmed_wap_link_can_be_replaced_a_confirmed_one_cannot(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    open_cashier(alipay, wap_query(alipay, "replace-1", "10.00"))
    # Alipay never heard of the first link: another amount is a new trade, not a conflict.
    html = open_cashier(alipay, wap_query(alipay, "replace-1", "12.00"))
    assert "¥ 12.00" in html
    sbx.control.confirm(out_trade_no="replace-1")
    refused = session().get(sbx.gateway + "?" + wap_query(alipay, "replace-1", "15.00"), timeout=10)
    assert refused.status_code == 400
    assert "ACQ.CONTEXT_INCONSISTENT" in refused.text


def test_time_expire_applies_to_wap_links_confirmed_or_not(
    sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver
) -> None:
    deadline = cn_time(3600)
    http = session()
    first = wap_query(alipay, "wap-timed-1", notify_url=receiver.url, time_expire=deadline)
    unconfirmed = open_cashier(alipay, first, http)
    sbx.control.confirm(
        sbx.gateway
        + "?"
        + wap_query(alipay, "wap-timed-2", notify_url=receiver.url, time_expire=deadline)
    )
    sbx.control.set_settings(clock_offset_s=7200)

    late = press(sbx, http, unconfirmed, "pay-button")
    assert late.status_code == 400 and 'id="payment-expired"' in late.text
    with pytest.raises(SandboxError) as refused:
        sbx.control.pay(out_trade_no="wap-timed-1")
    assert refused.value.payload["sub_code"] == "ACQ.TRADE_HAS_CLOSE"
    assert query_status(alipay, "wap-timed-1") == "ACQ.TRADE_NOT_EXIST"

    wait_for(lambda: query_status(alipay, "wap-timed-2") == "TRADE_CLOSED")
    notes = sbx.control.wait_notifications()
    assert [(n["out_trade_no"], n["trade_status"]) for n in notes] == [
        ("wap-timed-2", "TRADE_CLOSED")
    ]


# -- 7. a paid link opened again -------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "back"),
    [("wap", QUIT_URL), ("page", f"{RETURN_URL}?out_trade_no=paid-1")],
)
def test_a_paid_link_opened_again_says_it_is_paid_and_leads_back(
    sbx: SandboxProcess, alipay: AliPay, kind: str, back: str
) -> None:
    query = wap_query(alipay, "paid-1") if kind == "wap" else page_query(alipay, "paid-1")
    response, params = browser_pay(sbx, alipay, query)
    assert response.status_code == 302

    reopened = session().get(sbx.gateway + "?" + query, timeout=10)  # Back, or a reload
    assert reopened.status_code == 400
    assert 'id="already-paid"' in reopened.text and 'id="pay-button"' not in reopened.text
    assert 'id="error-sub-code">ACQ.TRADE_HAS_SUCCESS<' in reopened.text
    assert params["trade_no"] in reopened.text
    assert marker(reopened.text) == kind
    assert links(reopened.text)["back-to-shop"] == back

    cashier = session().get(urljoin(sbx.base_url, "/cashier/paid-1"), timeout=10)
    assert 'id="payment-done"' in cashier.text
    assert links(cashier.text)["back-to-shop"] == back


# -- the mobile layout in a real browser -----------------------------------------------------
# `browser` is the run's one Chromium (the repository's conftest.py).


def test_mobile_cashier_fits_a_phone_and_pays_with_one_tap(
    sbx: SandboxProcess, alipay: AliPay, browser: Any
) -> None:
    long_order = "wap-phone-" + "9" * 50
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.route(f"{SHOP}/**", lambda route: route.fulfill(status=200, body="shop"))
        page.goto(sbx.gateway + "?" + wap_query(alipay, long_order))
        assert page.get_attribute("body", "data-cashier") == "wap"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for target in ("#pay-button", "#confirm-button", "#cancel-button", "#quit-to-shop"):
            box = page.locator(target).bounding_box()
            assert box is not None and box["height"] >= 44, target
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, target
        assert page.locator("#pay-button").bounding_box()["width"] >= 300

        page.click("#pay-button")
        page.wait_for_url(re.compile(re.escape(RETURN_URL) + r"\?.*"))
        params = dict(parse_qsl(urlsplit(page.url).query))
        assert params["method"] == "alipay.trade.wap.pay.return"

        page.go_back()  # Back after paying: paid, with the way back to the shop
        assert page.locator("#already-paid").is_visible()
        assert page.get_attribute("#back-to-shop", "href") == QUIT_URL
    finally:
        page.close()


def test_desktop_cashier_puts_the_qr_code_beside_the_login_and_never_overflows(
    sbx: SandboxProcess, alipay: AliPay, browser: Any
) -> None:
    order = "2026120709171383895" + "0" * 10  # a shop's long order number, also the subject
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        query = alipay.api_alipay_trade_page_pay(
            f"Order {order}", order, "117.10", return_url=RETURN_URL, time_expire=cn_time(600)
        )
        page.goto(sbx.gateway + "?" + query)
        assert page.get_attribute("body", "data-cashier") == "page"
        qr = page.locator("#qr-panel").bounding_box()
        login = page.locator("#login-panel").bounding_box()
        assert qr is not None and login is not None
        assert qr["y"] == login["y"] and qr["x"] + qr["width"] <= login["x"]
        assert page.locator("#qr-code").is_visible() and page.locator("#pay-button").is_visible()
        for width in (1024, 768, 390, 320):  # the panels stack; nothing sticks out
            page.set_viewport_size({"width": width, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= width, width
    finally:
        page.close()
