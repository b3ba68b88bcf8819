"""Refunds, refund queries and bill downloads through python-alipay-sdk."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.testing import SandboxProcess, check_envelope, fetch_raw
from tests.sandbox.support import NotifyReceiver, cn_today, session

REFUND = "alipay.trade.refund"


def paid_trade(
    sbx: SandboxProcess, alipay: AliPay, out_trade_no: str, amount: str, notify_url: str = ""
) -> str:
    query = alipay.api_alipay_trade_page_pay(
        "Refundable", out_trade_no, amount, notify_url=notify_url or None
    )
    return sbx.control.pay(sbx.gateway + "?" + query)["trade_no"]


def refund_raw(
    alipay: AliPay, pub: rsa.RSAPublicKey, out_trade_no: str, amount: str, request_no: str
) -> dict:
    biz = {"out_trade_no": out_trade_no, "refund_amount": amount, "out_request_no": request_no}
    return check_envelope(fetch_raw(alipay, REFUND, biz), REFUND, pub)


def test_partial_repeat_cumulative_beyond_full(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    trade_no = paid_trade(sbx, alipay, "refund-1", "100.00", receiver.url)

    first = alipay.api_alipay_trade_refund("30.00", out_trade_no="refund-1", out_request_no="r1")
    assert first["code"] == "10000"
    assert first["fund_change"] == "Y"
    assert first["refund_fee"] == "30.00"
    assert first["send_back_fee"] == "30.00"
    assert first["trade_no"] == trade_no
    assert first["gmt_refund_pay"] and first["buyer_logon_id"]

    repeat = refund_raw(alipay, alipay_public_key, "refund-1", "30.00", "r1")
    assert repeat["code"] == "10000"
    assert repeat["fund_change"] == "N"
    assert repeat["refund_fee"] == "30.00"

    changed = alipay.api_alipay_trade_refund("31.00", out_trade_no="refund-1", out_request_no="r1")
    assert changed["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"

    second = refund_raw(alipay, alipay_public_key, "refund-1", "20.50", "r2")
    assert second["fund_change"] == "Y"
    assert second["refund_fee"] == "50.50"

    beyond = alipay.api_alipay_trade_refund("49.51", trade_no=trade_no, out_request_no="r3")
    assert beyond["code"] == "40004"
    assert beyond["sub_code"] == "ACQ.REASON_TRADE_REFUND_FEE_ERR"

    query = alipay.api_alipay_trade_query(out_trade_no="refund-1")
    assert query["trade_status"] == "TRADE_SUCCESS"

    full = alipay.api_alipay_trade_refund("49.50", trade_no=trade_no, out_request_no="r3")
    assert full["fund_change"] == "Y"
    assert full["refund_fee"] == "100.00"
    closed = alipay.api_alipay_trade_query(out_trade_no="refund-1")
    assert closed["trade_status"] == "TRADE_CLOSED"
    assert closed["trade_no"] == trade_no

    # A retried request after the trade closed still answers, unchanged.
    retry = alipay.api_alipay_trade_refund("49.50", trade_no=trade_no, out_request_no="r3")
    assert retry["fund_change"] == "N" and retry["refund_fee"] == "100.00"
    after_close = alipay.api_alipay_trade_refund("1.00", trade_no=trade_no, out_request_no="r4")
    assert after_close["sub_code"] == "ACQ.TRADE_STATUS_ERROR"

    notes = sbx.control.wait_notifications(
        "refund-1", predicate=lambda n: len(n) == 4 and all(x["state"] == "delivered" for x in n)
    )
    statuses = [(n["trade_status"], n["params"].get("refund_fee")) for n in notes]
    assert statuses == [
        ("TRADE_SUCCESS", None),
        ("TRADE_SUCCESS", "30.00"),
        ("TRADE_SUCCESS", "50.50"),
        ("TRADE_CLOSED", "100.00"),
    ]
    final = notes[-1]["params"]
    assert final["gmt_refund"] and final["gmt_close"]
    assert final["out_biz_no"] == "r3"
    assert len({n["notify_id"] for n in notes}) == 4
    trade = sbx.control.trade("refund-1")
    assert [r["out_request_no"] for r in trade["refunds"]] == ["r1", "r2", "r3"]


@pytest.mark.parametrize("amount", ["0", "-5", "1.234", "ten"])
def test_refund_bad_amount(sbx: SandboxProcess, alipay: AliPay, amount: str) -> None:
    paid_trade(sbx, alipay, "refund-2", "10.00")
    result = alipay.api_alipay_trade_refund(amount, out_trade_no="refund-2", out_request_no="x")
    assert result["code"] == "40004"
    assert result["sub_code"] == "ACQ.INVALID_PARAMETER"


def test_refund_unpaid_and_unknown(sbx: SandboxProcess, alipay: AliPay) -> None:
    session().get(
        sbx.gateway + "?" + alipay.api_alipay_trade_page_pay("U", "refund-3", "10.00"), timeout=10
    )
    unpaid = alipay.api_alipay_trade_refund("1.00", out_trade_no="refund-3", out_request_no="a")
    assert unpaid["sub_code"] == "ACQ.TRADE_STATUS_ERROR"
    unknown = alipay.api_alipay_trade_refund("1.00", out_trade_no="nope", out_request_no="a")
    assert unknown["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_fastpay_refund_query(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    trade_no = paid_trade(sbx, alipay, "refund-4", "40.00")
    missing = alipay.api_alipay_trade_fastpay_refund_query("q1", out_trade_no="refund-4")
    assert missing["code"] == "10000"
    assert "refund_status" not in missing and "refund_amount" not in missing

    alipay.api_alipay_trade_refund("15.00", out_trade_no="refund-4", out_request_no="q1")
    method = "alipay.trade.fastpay.refund.query"
    raw = fetch_raw(alipay, method, {"out_request_no": "q1", "trade_no": trade_no})
    node = check_envelope(raw, method, alipay_public_key)
    assert node["refund_status"] == "REFUND_SUCCESS"
    assert node["refund_amount"] == "15.00"
    assert node["total_amount"] == "40.00"
    assert node["out_trade_no"] == "refund-4" and node["out_request_no"] == "q1"
    via_sdk = alipay.api_alipay_trade_fastpay_refund_query("q1", trade_no=trade_no)
    assert via_sdk == node

    unknown = alipay.api_alipay_trade_fastpay_refund_query("q1", out_trade_no="nope")
    assert unknown["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_bill_download(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    trade_no = paid_trade(sbx, alipay, "bill-1", "66.60")
    alipay.api_alipay_trade_refund("6.60", out_trade_no="bill-1", out_request_no="b1")
    method = "alipay.data.dataservice.bill.downloadurl.query"
    biz = {"bill_type": "trade", "bill_date": cn_today()}
    result = alipay.server_api(method, biz)
    assert result["code"] == "10000"
    url = result["bill_download_url"]
    assert url.startswith(sbx.base_url + "/bills/")
    check_envelope(fetch_raw(alipay, method, biz), method, alipay_public_key)

    response = session().get(url, timeout=10)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    detail = next(name for name in archive.namelist() if name.endswith("业务明细.csv"))
    text = archive.read(detail).decode("gbk")
    rows = [row for row in csv.reader(io.StringIO(text)) if row and not row[0].startswith("#")]
    header, body = rows[0], rows[1:]
    wanted = {"支付宝交易号", "商户订单号", "业务类型", "订单金额（元）", "商家实收（元）"}
    assert wanted <= set(header)
    records = [dict(zip(header, row, strict=True)) for row in body]
    sale = next(r for r in records if r["业务类型"] == "交易")
    assert sale["支付宝交易号"] == trade_no
    assert sale["商户订单号"] == "bill-1"
    assert sale["订单金额（元）"] == "66.60"
    assert sale["商品名称"] == "Refundable"
    refund = next(r for r in records if r["业务类型"] == "退款")
    assert refund["商家实收（元）"] == "-6.60"
    assert refund["退款批次号/请求号"] == "b1"

    other_day = alipay.server_api(method, {"bill_type": "trade", "bill_date": "2001-01-01"})
    empty = session().get(other_day["bill_download_url"], timeout=10)
    archive = zipfile.ZipFile(io.BytesIO(empty.content))
    assert "bill-1" not in archive.read(archive.namelist()[0]).decode("gbk")

    assert session().get(sbx.base_url + "/bills/not-a-token.zip", timeout=10).status_code == 404
    bad = alipay.server_api(method, {"bill_type": "trade", "bill_date": "yesterday"})
    assert bad["code"] == "40004"
