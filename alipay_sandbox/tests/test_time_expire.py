"""time_expire in a page-pay request: the pay link and the trade die with it."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.client import SandboxError
from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, verify_rsa2
from alipay_sandbox.tests.support import (
    NotifyReceiver,
    cn_time,
    form_action,
    open_cashier,
    session,
    wait_for,
)


def pay_query(alipay: AliPay, out_trade_no: str, time_expire: str, notify_url: str = "") -> str:
    return alipay.api_alipay_trade_page_pay(
        "Timed", out_trade_no, "20.00", notify_url=notify_url or None, time_expire=time_expire
    )


def test_link_opened_after_time_expire_cannot_be_paid(sbx: SandboxProcess, alipay: AliPay) -> None:
    deadline = cn_time(-60)
    query = pay_query(alipay, "late-1", deadline)
    page = session().get(sbx.gateway + "?" + query, timeout=10)
    assert page.status_code == 400
    assert 'id="payment-expired"' in page.text and "pay-button" not in page.text
    assert deadline in page.text and "ACQ.TRADE_HAS_CLOSE" in page.text

    with pytest.raises(SandboxError) as caught:
        sbx.control.pay(sbx.gateway + "?" + query)
    assert caught.value.status == 400
    assert caught.value.payload["sub_code"] == "ACQ.TRADE_HAS_CLOSE"
    assert deadline in caught.value.payload["sub_msg"]
    # Never opened before its deadline: Alipay has no such trade.
    assert alipay.api_alipay_trade_query(out_trade_no="late-1")["sub_code"] == (
        "ACQ.TRADE_NOT_EXIST"
    )


def test_opened_trade_closes_at_time_expire_and_notifies(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    deadline = cn_time(4)
    paid_in_time = pay_query(alipay, "timed-paid", deadline, receiver.url)
    waiting = pay_query(alipay, "timed-1", deadline, receiver.url)
    html = open_cashier(alipay, waiting)
    assert f'id="time-expire">{deadline}' in html
    assert alipay.api_alipay_trade_query(out_trade_no="timed-1")["trade_status"] == (
        "WAIT_BUYER_PAY"
    )
    sbx.control.pay(sbx.gateway + "?" + paid_in_time)

    # Nobody asks: the sandbox closes the trade at its deadline and says so.
    def closed_notice() -> dict[str, str] | None:
        forms = [f for f in receiver.forms() if f["out_trade_no"] == "timed-1"]
        return forms[0] if forms else None

    notice = wait_for(closed_notice, timeout=8)
    assert notice["trade_status"] == "TRADE_CLOSED"
    assert notice["gmt_close"] == deadline
    assert notice["total_amount"] == "20.00"
    assert "gmt_payment" not in notice and "receipt_amount" not in notice
    unsigned = string_to_sign(notice, exclude=("sign", "sign_type"))
    assert verify_rsa2(alipay_public_key, unsigned, notice["sign"])

    closed = alipay.api_alipay_trade_query(out_trade_no="timed-1")
    assert closed["trade_status"] == "TRADE_CLOSED"
    refused = session().post(
        urljoin(sbx.base_url, form_action(html, "pay-button")), allow_redirects=False, timeout=10
    )
    assert refused.status_code == 400 and 'id="payment-expired"' in refused.text
    with pytest.raises(SandboxError) as caught:
        sbx.control.pay(out_trade_no="timed-1")
    assert caught.value.payload["sub_code"] == "ACQ.TRADE_HAS_CLOSE"
    reopened = session().get(sbx.gateway + "?" + waiting, timeout=10)
    assert 'id="payment-expired"' in reopened.text
    assert alipay.api_alipay_trade_close(out_trade_no="timed-1")["sub_code"] == (
        "ACQ.TRADE_STATUS_ERROR"
    )
    # Paid before its deadline: the deadline no longer matters.
    assert alipay.api_alipay_trade_query(out_trade_no="timed-paid")["trade_status"] == (
        "TRADE_SUCCESS"
    )
    statuses = [n["trade_status"] for n in sbx.control.notifications("timed-1")]
    assert statuses == ["TRADE_CLOSED"]


def test_time_expire_follows_the_sandbox_clock(sbx: SandboxProcess, alipay: AliPay) -> None:
    query = pay_query(alipay, "timed-2", cn_time(600))
    open_cashier(alipay, query)
    # A later link for the same order cannot move the deadline the trade was created with.
    open_cashier(alipay, pay_query(alipay, "timed-2", cn_time(7200)))
    sbx.control.set_settings(clock_offset_s=601)
    assert alipay.api_alipay_trade_query(out_trade_no="timed-2")["trade_status"] == ("TRADE_CLOSED")
    with pytest.raises(SandboxError):
        sbx.control.pay(sbx.gateway + "?" + query)


@pytest.mark.parametrize("bad", ["2024/01/01 10:00:00", "2024-01-01", "soon", "2024-1-1 1:2:3"])
def test_malformed_time_expire_is_refused(sbx: SandboxProcess, alipay: AliPay, bad: str) -> None:
    page = session().get(sbx.gateway + "?" + pay_query(alipay, "bad-expire", bad), timeout=10)
    assert page.status_code == 400
    assert "ACQ.INVALID_PARAMETER" in page.text and "time_expire" in page.text
