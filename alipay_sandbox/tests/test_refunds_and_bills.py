"""Refunds, refund queries and bill downloads through python-alipay-sdk."""

from __future__ import annotations

import re
import time

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.bills import COLUMNS
from alipay_sandbox.client import SandboxError
from alipay_sandbox.testing import SandboxProcess, check_envelope, fetch_raw
from alipay_sandbox.tests.support import (
    SELLER_ID,
    NotifyReceiver,
    bill_url,
    cn_day,
    cn_today,
    download,
    read_bill,
    session,
)

REFUND = "alipay.trade.refund"
BILL = "alipay.data.dataservice.bill.downloadurl.query"


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
    other_no = sbx.control.pay(
        sbx.gateway + "?" + alipay.api_alipay_trade_page_pay("账单 商品", "bill-2", "3.00")
    )["trade_no"]
    # Bills are T+1: today's is refused until the sandbox's clock has moved to tomorrow.
    assert bill_url(alipay, cn_today())["sub_code"] == "isv.invalid_arguments"
    sbx.control.set_settings(clock_offset_s=86400)
    result = bill_url(alipay, cn_today())
    assert result["code"] == "10000"
    url = result["bill_download_url"]
    assert url.startswith(sbx.base_url + "/bills/")
    biz = {"bill_type": "trade", "bill_date": cn_today()}
    check_envelope(fetch_raw(alipay, BILL, biz), BILL, alipay_public_key)

    response = session().get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"  # streamed, not built in memory
    stem = f"{SELLER_ID}0156_{cn_today().replace('-', '')}"
    assert stem + ".csv.zip" in response.headers["Content-Disposition"]
    bill = read_bill(response.content)
    assert sorted(bill.names) == [f"{stem}_业务明细(汇总).csv", f"{stem}_业务明细.csv"]
    assert bill.lines[:2] == ["#支付宝业务明细查询", f"#账号：[{SELLER_ID}0156]"]
    assert bill.lines[2].startswith("#起始日期：[")
    assert bill.header == COLUMNS
    records = bill.records
    # By completion time (within one second the order is Alipay's business).
    assert sorted((r["商户订单号"], r["业务类型"]) for r in records) == [
        ("bill-1", "交易"),
        ("bill-1", "退款"),
        ("bill-2", "交易"),
    ]
    assert [r["完成时间"] for r in records] == sorted(r["完成时间"] for r in records)
    sale, refund, other = sorted(records, key=lambda r: (r["商户订单号"], r["业务类型"]))
    sale, refund = (refund, sale) if sale["业务类型"] == "退款" else (sale, refund)
    assert sale["支付宝交易号"] == trade_no and other["支付宝交易号"] == other_no
    assert sale["订单金额（元）"] == sale["商家实收（元）"] == "66.60"
    assert sale["商品名称"] == "Refundable" and other["商品名称"] == "账单 商品"
    assert sale["退款批次号/请求号"] == ""
    assert refund["支付宝交易号"] == trade_no
    assert refund["订单金额（元）"] == refund["商家实收（元）"] == "-6.60"
    assert refund["退款批次号/请求号"] == "b1"
    assert refund["创建时间"] == sale["创建时间"] and refund["完成时间"] >= sale["完成时间"]
    # Alipay pads most values with a tab: the raw line keeps it, readers strip it.
    assert bill.raw_rows[0][0] == trade_no + "\t" and bill.raw_rows[0][2] == "交易\t"
    assert bill.footer[0] == "#交易合计：2笔，商家实收共69.60元，商家优惠共0.00元"
    assert bill.footer[1] == "#退款合计：1笔，商家实收退款共-6.60元，商家优惠退款共0.00元"
    assert bill.footer[2].startswith("#导出时间：[")
    assert bill.summary["交易订单总笔数"] == "2" and bill.summary["退款订单总笔数"] == "1"
    assert bill.summary["商家实收（元）"] == "63.00"

    assert session().get(sbx.base_url + "/bills/not-a-token.zip", timeout=10).status_code == 404


def test_bills_are_t_plus_one_and_only_for_days_with_trades(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    paid_trade(sbx, alipay, "bill-3", "1.00")
    for day in (cn_today(), cn_day(1), cn_today()[:7]):
        refused = bill_url(alipay, day)
        assert (refused["code"], refused["sub_code"]) == ("40004", "isv.invalid_arguments"), day
    for bad in ("yesterday", "2024-02-30", "2024-13", ""):
        assert bill_url(alipay, bad)["sub_code"] == "isv.invalid_arguments", bad
    wrong_type = alipay.server_api(BILL, {"bill_type": "fund", "bill_date": cn_day(-1)})
    assert wrong_type["sub_code"] == "isv.invalid_arguments"
    for empty_day in (cn_day(-1), "2001-01-01", "2001-01"):
        missing = bill_url(alipay, empty_day)
        assert (missing["code"], missing["sub_code"]) == ("40004", "isp.bill_not_exist")
    raw = fetch_raw(alipay, BILL, {"bill_type": "trade", "bill_date": "2001-01-01"})
    assert check_envelope(raw, BILL, alipay_public_key)["sub_code"] == "isp.bill_not_exist"


def test_bill_url_expires(sbx: SandboxProcess, alipay: AliPay) -> None:
    # 30 s times the time factor (0.001 here), never under 2 s: a client can always fetch it.
    assert sbx.control.settings()["bill_url_ttl_s"] == 2.0
    sbx.control.generate_trades(cn_day(-3), 3)
    sbx.control.set_settings(bill_url_ttl_s=1.0)
    url = bill_url(alipay, cn_day(-3))["bill_download_url"]
    assert session().get(url, timeout=10).status_code == 200
    time.sleep(1.2)
    assert session().get(url, timeout=10).status_code == 404
    assert session().get(bill_url(alipay, cn_day(-3))["bill_download_url"], timeout=10).ok


def test_bill_url_fault_names_another_url_in_the_signed_answer(
    sbx: SandboxProcess, alipay: AliPay, alipay_public_key: rsa.RSAPublicKey
) -> None:
    crafted = "http://127.0.0.1:9/crafted.zip"
    sbx.control.set_faults(bill_url=crafted)
    # Any well-formed day, with trades or not, today included: the answer names the URL.
    for day in (cn_today(), "2001-01-01"):
        biz = {"bill_type": "trade", "bill_date": day}
        answer = check_envelope(fetch_raw(alipay, BILL, biz), BILL, alipay_public_key)
        assert (answer["code"], answer["bill_download_url"]) == ("10000", crafted)
    assert bill_url(alipay, "2024-13")["sub_code"] == "isv.invalid_arguments"
    with pytest.raises(SandboxError):
        sbx.control.set_faults(bill_url=1)
    sbx.control.clear_faults()
    assert bill_url(alipay, "2001-01-01")["sub_code"] == "isp.bill_not_exist"


def test_synthetic_trades_make_a_monthly_and_a_daily_bill(
    sbx: SandboxProcess, alipay: AliPay
) -> None:
    made = sbx.control.generate_trades(
        "2023-03-15", 40, refunds=4, amount=["1.00", "2.50"], prefix="m-"
    )
    assert made["first_out_trade_no"] == "m-000000" and made["last_out_trade_no"] == "m-000039"
    assert made["total_amount"] == "70.00" and made["refund_amount"] == "2.00"
    sbx.control.generate_trades("2023-03-16", 2, prefix="n-")
    daily = read_bill(download(alipay, "2023-03-15"))
    assert len([r for r in daily.records if r["业务类型"] == "交易"]) == 40
    refunds = [r for r in daily.records if r["业务类型"] == "退款"]
    assert [r["退款批次号/请求号"] for r in refunds] == [
        "m-000000-R1",
        "m-000010-R1",
        "m-000020-R1",
        "m-000030-R1",
    ]
    assert all(r["创建时间"].startswith("2023-03-15 ") for r in daily.records)
    assert all(re.fullmatch(r"20230315\d{20}", r["支付宝交易号"]) for r in daily.records)
    monthly = read_bill(download(alipay, "2023-03"))
    assert len(monthly.records) == 46
    trade = sbx.control.trade("m-000010")
    assert trade["status"] == "TRADE_SUCCESS" and trade["refund_fee"] == "0.50"
    with pytest.raises(SandboxError) as caught:
        sbx.control.generate_trades("2023-03-15", 1, prefix="m-")
    assert caught.value.status == 400
    for bad in ({"date": "2023-02-30", "count": 1}, {"date": "2023-03-01", "count": 0}):
        with pytest.raises(SandboxError) as caught:
            sbx.control._call("POST", "/_sandbox/trades/generate", bad)
        assert caught.value.status == 400
