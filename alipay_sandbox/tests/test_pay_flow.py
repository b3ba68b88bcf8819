"""Page pay and wap pay through python-alipay-sdk, the cashier, the return, query, close."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox import cashier
from alipay_sandbox.client import SandboxControl
from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, check_envelope, fetch_raw, verify_rsa2
from alipay_sandbox.tests.support import (
    APP_ID,
    SELLER_ID,
    NotifyReceiver,
    browser_pay,
    cn_today,
    form_action,
    open_cashier,
    session,
    wait_for,
)

RETURN_KEYS = {
    "charset",
    "out_trade_no",
    "method",
    "total_amount",
    "sign",
    "trade_no",
    "auth_app_id",
    "version",
    "app_id",
    "sign_type",
    "seller_id",
    "timestamp",
}


def query(alipay: AliPay, pub: rsa.RSAPublicKey, out_trade_no: str) -> dict:
    result = alipay.api_alipay_trade_query(out_trade_no=out_trade_no)
    raw = fetch_raw(alipay, "alipay.trade.query", {"out_trade_no": out_trade_no})
    node = check_envelope(raw, "alipay.trade.query", pub)
    assert node["code"] == result["code"]
    return result


def check_return(alipay: AliPay, pub: rsa.RSAPublicKey, params: dict[str, str]) -> None:
    assert set(params) == RETURN_KEYS
    independent = string_to_sign(params, exclude=("sign", "sign_type"))
    assert verify_rsa2(pub, independent, params["sign"])
    data = dict(params)
    signature = data.pop("sign")
    assert alipay.verify(data, signature)


def test_page_pay_browser_flow(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    before = query(alipay, alipay_public_key, "order-1")
    assert before["code"] == "40004"
    assert before["sub_code"] == "ACQ.TRADE_NOT_EXIST"

    pay_query = alipay.api_alipay_trade_page_pay(
        "测试商品 Book",
        "order-1",
        "88.80",
        return_url="http://shop.test/pay/return",
        notify_url=receiver.url,
    )
    html = open_cashier(alipay, pay_query)
    assert 'id="pay-button"' in html and 'id="cancel-button"' in html
    assert "88.80" in html and "测试商品 Book" in html

    waiting = query(alipay, alipay_public_key, "order-1")
    assert waiting["code"] == "10000"
    assert waiting["trade_status"] == "WAIT_BUYER_PAY"
    assert "trade_no" not in waiting

    http = session()
    action = form_action(html, "pay-button")
    response = http.post(urljoin(sbx.base_url, action), allow_redirects=False, timeout=10)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("http://shop.test/pay/return?")
    params = dict(parse_qsl(urlsplit(location).query))
    check_return(alipay, alipay_public_key, params)
    assert params["method"] == "alipay.trade.page.pay.return"
    assert params["out_trade_no"] == "order-1"
    assert params["total_amount"] == "88.80"
    assert params["app_id"] == params["auth_app_id"] == APP_ID
    assert params["seller_id"] == SELLER_ID
    # 28 digits, the first eight the Beijing date of payment, as Alipay numbers its trades.
    assert re.fullmatch(r"\d{28}", params["trade_no"])
    assert params["trade_no"][:8] == cn_today().replace("-", "")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", params["timestamp"])

    paid = query(alipay, alipay_public_key, "order-1")
    assert paid["code"] == "10000"
    assert paid["trade_status"] == "TRADE_SUCCESS"
    assert paid["trade_no"] == params["trade_no"]
    assert paid["total_amount"] == paid["buyer_pay_amount"] == paid["receipt_amount"] == "88.80"
    assert paid["point_amount"] == "0.00"
    assert paid["fund_bill_list"] == [{"amount": "88.80", "fund_channel": "ALIPAYACCOUNT"}]
    assert paid["send_pay_date"] and paid["buyer_user_id"].startswith("2088")
    by_trade_no = alipay.api_alipay_trade_query(trade_no=params["trade_no"])
    assert by_trade_no["out_trade_no"] == "order-1"

    forms = wait_for(receiver.forms)
    assert forms[0]["trade_status"] == "TRADE_SUCCESS"
    assert forms[0]["trade_no"] == params["trade_no"]

    # Paying again (a reload of the pay button) redirects to the same return, no new notice.
    again = http.post(urljoin(sbx.base_url, action), allow_redirects=False, timeout=10)
    assert again.status_code == 302
    assert dict(parse_qsl(urlsplit(again.headers["Location"]).query)) == params
    assert len(sbx.control.notifications("order-1")) == 1


def test_wap_pay_and_return_url_with_query(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    pay_query = alipay.api_alipay_trade_wap_pay(
        "Phone case",
        "wap-1",
        "5",
        return_url="http://shop.test/back?order=7",
        product_code="QUICK_WAP_WAY",
    )
    response, params = browser_pay(sbx, alipay, pay_query)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://shop.test/back?order=7&charset=")
    assert params.pop("order") == "7"
    check_return(alipay, alipay_public_key, params)
    assert params["method"] == "alipay.trade.wap.pay.return"
    assert params["total_amount"] == "5.00"
    trade = sbx.control.trade("wap-1")
    assert trade["method"] == "alipay.trade.wap.pay"
    assert trade["status"] == "TRADE_SUCCESS"


def test_reopen_same_order_and_inconsistent_amount(sbx: SandboxProcess, alipay: AliPay) -> None:
    first = alipay.api_alipay_trade_page_pay("Pen", "order-2", "3.50", return_url="http://a/r")
    open_cashier(alipay, first)
    open_cashier(alipay, alipay.api_alipay_trade_page_pay("Pen", "order-2", "3.50"))
    other = alipay.api_alipay_trade_page_pay("Pen", "order-2", "9.99")
    response = session().get(sbx.gateway + "?" + other, timeout=10)
    assert response.status_code == 400
    assert "ACQ.CONTEXT_INCONSISTENT" in response.text

    sbx.control.pay(out_trade_no="order-2")
    paid_again = session().get(sbx.gateway + "?" + first, timeout=10)
    assert paid_again.status_code == 400
    assert "ACQ.TRADE_HAS_SUCCESS" in paid_again.text


@pytest.mark.parametrize("amount", ["0", "-1.00", "1.001", "abc"])
def test_page_pay_bad_amount(sbx: SandboxProcess, alipay: AliPay, amount: str) -> None:
    pay_query = alipay.api_alipay_trade_page_pay("Bad", "bad-amount", amount)
    response = session().get(sbx.gateway + "?" + pay_query, timeout=10)
    assert response.status_code == 400
    assert "ACQ.INVALID_PARAMETER" in response.text


def test_cancel_leaves_trade_waiting(sbx: SandboxProcess, alipay: AliPay) -> None:
    pay_query = alipay.api_alipay_trade_page_pay("Mug", "order-3", "12.00")
    http = session()
    html = open_cashier(alipay, pay_query, http)
    response = http.post(urljoin(sbx.base_url, form_action(html, "cancel-button")), timeout=10)
    assert response.status_code == 200
    assert 'id="payment-cancelled"' in response.text
    assert sbx.control.trade("order-3")["status"] == "WAIT_BUYER_PAY"
    back = http.get(urljoin(sbx.base_url, "/cashier/order-3"), timeout=10)
    assert 'id="pay-button"' in back.text


@pytest.mark.parametrize(
    ("return_url", "shop"),
    [
        (
            "http://shop.test:8000/pay_success.html?from=cashier",
            "http://shop.test:8000/pay_success.html?from=cashier&out_trade_no=order-5",
        ),
        (
            "https://buyer:secret@shop.example.com/pay/return",
            "https://shop.example.com/pay/return?out_trade_no=order-5",
        ),
        (None, None),
    ],
)
def test_cancel_page_leads_back_to_the_shop_the_trade_returns_to(
    sbx: SandboxProcess, alipay: AliPay, return_url: str | None, shop: str | None
) -> None:
    pay_query = alipay.api_alipay_trade_page_pay("Mug", "order-5", "12.00", return_url=return_url)
    http = session()
    html = open_cashier(alipay, pay_query, http)
    response = http.post(urljoin(sbx.base_url, form_action(html, "cancel-button")), timeout=10)
    assert response.status_code == 200
    links = {
        name: unescape(href)
        for name, href in re.findall(r'<a id="([\w-]+)" href="([^"]*)"', response.text)
    }
    # page.pay has no quit_url: back to the return page, told only which order (unsigned).
    assert links.get("back-to-shop") == shop
    assert links["back-to-cashier"] == "/cashier/order-5"
    assert 'name="viewport"' in response.text


def test_cashier_shows_the_trade_status_in_words(sbx: SandboxProcess, alipay: AliPay) -> None:
    html = open_cashier(alipay, alipay.api_alipay_trade_page_pay("Mug", "order-6", "12.00"))
    assert '<td id="trade-status" data-status="WAIT_BUYER_PAY">Waiting for payment</td>' in html
    assert 'name="viewport"' in html


@pytest.mark.parametrize(
    ("status", "words"),
    [("WAIT_BUYER_PAY", "Waiting for payment"), ("TRADE_SUCCESS", "Paid"),
     ("TRADE_CLOSED", "Closed"), ("TRADE_FINISHED", "Finished")],
)
def test_every_trade_status_has_words_on_the_cashier_page(status: str, words: str) -> None:
    trade = {"out_trade_no": "order-7", "subject": "Mug", "total_amount": "12.00",
             "status": status, "time_expire": ""}
    html = cashier.cashier_page(trade)
    assert f'<td id="trade-status" data-status="{status}">{words}</td>' in html


def test_close(sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey) -> None:
    unknown = alipay.api_alipay_trade_close(out_trade_no="nope")
    assert unknown["sub_code"] == "ACQ.TRADE_NOT_EXIST"

    pay_query = alipay.api_alipay_trade_page_pay("Lamp", "order-4", "30.00")
    html = open_cashier(alipay, pay_query)
    raw = fetch_raw(alipay, "alipay.trade.close", {"out_trade_no": "order-4"})
    node = check_envelope(raw, "alipay.trade.close", alipay_public_key)
    assert node == {"code": "10000", "msg": "Success", "out_trade_no": "order-4"}
    assert query(alipay, alipay_public_key, "order-4")["trade_status"] == "TRADE_CLOSED"
    again = alipay.api_alipay_trade_close(out_trade_no="order-4")
    assert again["sub_code"] == "ACQ.TRADE_STATUS_ERROR"

    refused = session().post(
        urljoin(sbx.base_url, form_action(html, "pay-button")), allow_redirects=False, timeout=10
    )
    assert refused.status_code == 400
    assert "ACQ.TRADE_HAS_CLOSE" in refused.text
    reopen = session().get(sbx.gateway + "?" + pay_query, timeout=10)
    assert "ACQ.TRADE_HAS_CLOSE" in reopen.text

    paid_query = alipay.api_alipay_trade_page_pay("Lamp", "order-5", "30.00")
    sbx.control.pay(sbx.gateway + "?" + paid_query)
    paid_close = alipay.api_alipay_trade_close(out_trade_no="order-5")
    assert paid_close["code"] == "40004"
    assert paid_close["sub_code"] == "ACQ.TRADE_STATUS_ERROR"


def test_control_pay_is_idempotent(
    control: SandboxControl, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    receiver = NotifyReceiver()
    try:
        pay_url = (
            control.gateway
            + "?"
            + alipay.api_alipay_trade_page_pay(
                "Desk",
                "order-6",
                "199.00",
                return_url="http://shop.test/r",
                notify_url=receiver.url,
            )
        )
        first = control.pay(pay_url)
        assert first["out_trade_no"] == "order-6"
        assert first["return_dropped"] is False
        params = dict(parse_qsl(urlsplit(first["return_url"]).query))
        check_return(alipay, alipay_public_key, params)
        assert params["trade_no"] == first["trade_no"]
        second = control.pay(pay_url)
        third = control.pay(out_trade_no="order-6")
        assert second["trade_no"] == third["trade_no"] == first["trade_no"]
        assert second["return_url"] == first["return_url"]
        notes = control.wait_notifications("order-6")
        assert len(notes) == 1 and notes[0]["state"] == "delivered"
        assert len(receiver.forms()) == 1
        trade = control.trade("order-6")
        assert trade["status"] == "TRADE_SUCCESS"
        assert trade["return_url_full"] == first["return_url"]
    finally:
        receiver.close()


def test_control_pay_unknown_trade(control: SandboxControl) -> None:
    from alipay_sandbox.client import SandboxError

    with pytest.raises(SandboxError) as caught:
        control.pay(out_trade_no="missing")
    assert caught.value.status == 400
    assert caught.value.payload["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_sdk_raises_nothing_for_business_failure(alipay: AliPay) -> None:
    # The SDK returns 40004 answers as dicts; it raises only for unsigned ones.
    try:
        result = alipay.api_alipay_trade_query(out_trade_no="does-not-exist")
    except AliPayException as exc:  # pragma: no cover - would be a sandbox bug
        pytest.fail(f"signed business failure raised: {exc}")
    assert result["code"] == "40004"
