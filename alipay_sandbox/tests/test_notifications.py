"""Asynchronous notifications: retries, signatures, and the notification faults."""

from __future__ import annotations

import itertools
import re
import time

from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, verify_rsa2
from alipay_sandbox.tests.support import SELLER_ID, NotifyReceiver, wait_for

FIELDS = {
    "notify_time",
    "notify_type",
    "notify_id",
    "app_id",
    "auth_app_id",
    "charset",
    "version",
    "sign_type",
    "sign",
    "trade_no",
    "out_trade_no",
    "buyer_id",
    "buyer_logon_id",
    "seller_id",
    "seller_email",
    "trade_status",
    "total_amount",
    "receipt_amount",
    "invoice_amount",
    "buyer_pay_amount",
    "point_amount",
    "subject",
    "gmt_create",
    "gmt_payment",
    "fund_bill_list",
}


def pay(sbx: SandboxProcess, alipay: AliPay, out_trade_no: str, notify_url: str) -> dict:
    query = alipay.api_alipay_trade_page_pay(
        "通知 test", out_trade_no, "18.00", notify_url=notify_url
    )
    return sbx.control.pay(sbx.gateway + "?" + query)


def check_signature(alipay: AliPay, pub: rsa.RSAPublicKey, form: dict[str, str]) -> None:
    assert verify_rsa2(pub, string_to_sign(form, exclude=("sign", "sign_type")), form["sign"])
    data = dict(form)
    signature = data.pop("sign")
    assert alipay.verify(data, signature)


def test_retries_until_success(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    receiver = NotifyReceiver(script=["fail", "fail"])
    try:
        paid = pay(sbx, alipay, "notify-1", receiver.url)
        notes = sbx.control.wait_notifications("notify-1")
        time.sleep(0.3)  # nothing more may arrive after success
        forms = receiver.forms()
        assert len(forms) == 3
        assert len({form["notify_id"] for form in forms}) == 1
        assert receiver.received[0]["content_type"].startswith("application/x-www-form-urlencoded")
        for form in forms:
            check_signature(alipay, alipay_public_key, form)
        form = forms[0]
        assert set(form) == FIELDS
        assert re.fullmatch(r"\d{34}", form["notify_id"])  # numeric, as Alipay issues them
        assert form["trade_status"] == "TRADE_SUCCESS"
        assert form["notify_type"] == "trade_status_sync"
        assert form["trade_no"] == paid["trade_no"]
        assert form["total_amount"] == "18.00"
        assert form["seller_id"] == SELLER_ID
        assert form["subject"] == "通知 test"
        assert form["fund_bill_list"] == '[{"amount":"18.00","fundChannel":"ALIPAYACCOUNT"}]'
        (note,) = notes
        assert note["state"] == "delivered" and note["next_at"] is None
        assert note["notify_id"] == form["notify_id"]
        assert [a["body"] for a in note["attempts"]] == ["fail", "fail", "success"]
        assert [a["http_status"] for a in note["attempts"]] == [200, 200, 200]
        # 4 min and 10 min at time factor 0.001: 0.24 s, then 0.6 s.
        times = [a["at"] for a in note["attempts"]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert 0.2 < gaps[0] < 0.6 and 0.55 < gaps[1] < 1.2
    finally:
        receiver.close()


def test_notify_drop(sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver) -> None:
    sbx.control.set_faults(notify_drop=True)
    pay(sbx, alipay, "notify-2", receiver.url)
    time.sleep(0.5)
    assert receiver.forms() == []
    (note,) = sbx.control.notifications("notify-2")
    assert note["state"] == "dropped" and note["attempts"] == []


def test_notify_duplicate(sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver) -> None:
    sbx.control.set_faults(notify_duplicate=2)
    pay(sbx, alipay, "notify-3", receiver.url)
    notes = sbx.control.wait_notifications("notify-3")
    wait_for(lambda: len(receiver.forms()) == 3)
    assert len({form["notify_id"] for form in receiver.forms()}) == 1
    assert len(notes[0]["attempts"]) == 3


def test_notify_delay_and_flush(
    sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver
) -> None:
    sbx.control.set_faults(notify_delay_s=0.6)
    pay(sbx, alipay, "notify-4", receiver.url)
    note = sbx.control.wait_notifications("notify-4")[0]
    assert note["attempts"][0]["at"] - note["created_at"] >= 0.55

    sbx.control.set_faults(notify_delay_s=60)
    pay(sbx, alipay, "notify-5", receiver.url)
    time.sleep(0.2)
    assert sbx.control.notifications("notify-5")[0]["state"] == "pending"
    assert sbx.control.flush_notifications() == 1
    assert sbx.control.wait_notifications("notify-5", timeout=3)[0]["state"] == "delivered"


def test_notify_reorder(sbx: SandboxProcess, alipay: AliPay, receiver: NotifyReceiver) -> None:
    sbx.control.set_faults(notify_reorder=True, notify_reorder_window_s=0.3)
    pay(sbx, alipay, "notify-6", receiver.url)
    alipay.api_alipay_trade_refund("8.00", out_trade_no="notify-6", out_request_no="a")
    alipay.api_alipay_trade_refund("10.00", out_trade_no="notify-6", out_request_no="b")
    assert {n["state"] for n in sbx.control.notifications("notify-6")} == {"held"}
    sbx.control.wait_notifications("notify-6")
    statuses = [(f["trade_status"], f.get("refund_fee")) for f in receiver.forms()]
    assert statuses == [
        ("TRADE_CLOSED", "18.00"),
        ("TRADE_SUCCESS", "8.00"),
        ("TRADE_SUCCESS", None),
    ]
