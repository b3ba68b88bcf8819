"""The notifications of a trade's later life: closed, refunded, out of its refund window."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.client import SandboxError
from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, verify_rsa2
from alipay_sandbox.tests.support import NotifyReceiver, open_cashier, wait_for


def by_status(receiver: NotifyReceiver, out_trade_no: str) -> list[dict[str, str]]:
    return [f for f in receiver.forms() if f["out_trade_no"] == out_trade_no]


def signed_by_alipay(pub: rsa.RSAPublicKey, form: dict[str, str]) -> bool:
    return verify_rsa2(pub, string_to_sign(form, exclude=("sign", "sign_type")), form["sign"])


def test_close_sends_trade_closed(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    query = alipay.api_alipay_trade_page_pay("Shut", "close-1", "9.90", notify_url=receiver.url)
    open_cashier(alipay, query)
    assert alipay.api_alipay_trade_close(out_trade_no="close-1")["code"] == "10000"

    (notice,) = wait_for(lambda: by_status(receiver, "close-1"))
    assert notice["trade_status"] == "TRADE_CLOSED"
    assert notice["gmt_close"] >= notice["gmt_create"]
    assert notice["total_amount"] == "9.90"
    assert re.fullmatch(r"\d{34}", notice["notify_id"])
    assert "gmt_payment" not in notice and "buyer_pay_amount" not in notice
    assert signed_by_alipay(alipay_public_key, notice)


def test_refund_notifications_carry_the_refund(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    query = alipay.api_alipay_trade_page_pay("Kettle", "refund-n", "50.00", notify_url=receiver.url)
    trade_no = sbx.control.pay(sbx.gateway + "?" + query)["trade_no"]
    alipay.api_alipay_trade_refund("20.00", out_trade_no="refund-n", out_request_no="rq-1")
    alipay.api_alipay_trade_refund("30.00", out_trade_no="refund-n", out_request_no="rq-2")
    forms = wait_for(lambda: len(by_status(receiver, "refund-n")) == 3 and receiver.forms())
    paid, partial, full = sorted(forms, key=lambda f: Decimal(f.get("refund_fee", "0")))
    assert (paid["trade_status"], "refund_fee" in paid, "out_biz_no" in paid) == (
        "TRADE_SUCCESS",
        False,
        False,
    )
    assert partial["trade_status"] == "TRADE_SUCCESS"
    assert (partial["refund_fee"], partial["out_biz_no"]) == ("20.00", "rq-1")
    assert partial["gmt_refund"] and "gmt_close" not in partial
    assert full["trade_status"] == "TRADE_CLOSED"
    assert (full["refund_fee"], full["out_biz_no"]) == ("50.00", "rq-2")
    assert full["gmt_refund"] and full["gmt_close"] == full["gmt_refund"]
    assert {f["trade_no"] for f in forms} == {trade_no}
    assert all(signed_by_alipay(alipay_public_key, form) for form in forms)


def test_trade_finished_when_the_refund_window_ends(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    # 365 days times the time factor by default; a test makes it short (real seconds).
    assert sbx.control.settings()["refund_window_s"] == pytest.approx(365 * 86400 * 0.001)
    sbx.control.set_settings(refund_window_s=2.0)
    for out_trade_no in ("window-1", "window-2"):
        query = alipay.api_alipay_trade_page_pay(
            "Window", out_trade_no, "10.00", notify_url=receiver.url
        )
        sbx.control.pay(sbx.gateway + "?" + query)
    alipay.api_alipay_trade_refund("4.00", out_trade_no="window-1", out_request_no="w1")
    alipay.api_alipay_trade_refund("10.00", out_trade_no="window-2", out_request_no="w2")
    assert alipay.api_alipay_trade_query(out_trade_no="window-1")["trade_status"] == (
        "TRADE_SUCCESS"
    )

    def finished() -> list[dict[str, str]]:
        return [f for f in receiver.forms() if f["trade_status"] == "TRADE_FINISHED"]

    (notice,) = wait_for(finished, timeout=8)
    assert notice["out_trade_no"] == "window-1"
    assert notice["refund_fee"] == "4.00" and notice["gmt_close"] >= notice["gmt_payment"]
    assert notice["total_amount"] == notice["receipt_amount"] == "10.00"
    assert signed_by_alipay(alipay_public_key, notice)
    assert alipay.api_alipay_trade_query(out_trade_no="window-1")["trade_status"] == (
        "TRADE_FINISHED"
    )
    late = alipay.api_alipay_trade_refund("1.00", out_trade_no="window-1", out_request_no="w3")
    assert late["sub_code"] == "ACQ.TRADE_STATUS_ERROR"
    repeat = alipay.api_alipay_trade_refund("4.00", out_trade_no="window-1", out_request_no="w1")
    assert repeat["fund_change"] == "N"
    # Fully refunded: closed, never finished.
    assert alipay.api_alipay_trade_query(out_trade_no="window-2")["trade_status"] == (
        "TRADE_CLOSED"
    )
    assert [n["trade_status"] for n in sbx.control.notifications("window-2")] == [
        "TRADE_SUCCESS",
        "TRADE_CLOSED",
    ]


def test_settings_are_checked_and_reset(sbx: SandboxProcess) -> None:
    defaults = sbx.control.settings()
    assert defaults["empty_param_rate"] == 0.0 and defaults["clock_offset_s"] == 0.0
    for bad in (
        {"refund_window_s": 0},
        {"bill_url_ttl_s": -1},
        {"empty_param_rate": 1.5},
        {"clock_offset_s": "soon"},
        {"refund_window_s": True},
        {"nonsense": 1},
    ):
        with pytest.raises(SandboxError) as caught:
            sbx.control.set_settings(**bad)
        assert caught.value.status == 400, bad
    changed = sbx.control.set_settings(empty_param_rate=0.25, clock_offset_s=-30)
    assert changed["empty_param_rate"] == 0.25 and changed["clock_offset_s"] == -30
    assert sbx.control.clear_settings() == defaults
    sbx.control.set_settings(refund_window_s=5)
    sbx.control.reset()
    assert sbx.control.settings() == defaults
