"""Injected faults on the return redirect and on server API calls."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException

from alipay_sandbox.client import SandboxError
from alipay_sandbox.testing import SandboxProcess
from alipay_sandbox.tests.support import browser_pay, make_client


def test_drop_return(sbx: SandboxProcess, alipay: AliPay) -> None:
    sbx.control.set_faults(drop_return=True)
    query = alipay.api_alipay_trade_page_pay("Drop", "fault-1", "1.00", return_url="http://s/r")
    response, params = browser_pay(sbx, alipay, query)
    assert response.status_code == 200
    assert 'id="payment-done"' in response.text
    assert params == {}
    assert alipay.api_alipay_trade_query(out_trade_no="fault-1")["trade_status"] == "TRADE_SUCCESS"

    query2 = alipay.api_alipay_trade_page_pay("Drop", "fault-2", "1.00", return_url="http://s/r")
    paid = sbx.control.pay(sbx.gateway + "?" + query2)
    assert paid["return_dropped"] is True
    assert paid["return_url"].startswith("http://s/r?")


def test_error_20000(sbx: SandboxProcess, alipay: AliPay) -> None:
    sbx.control.set_faults(error_rate=1.0, error_kind="20000")
    with pytest.raises(AliPayException) as caught:
        alipay.api_alipay_trade_query(out_trade_no="x")
    assert "code:20000" in str(caught.value)
    assert "isp.unknow-error" in str(caught.value)
    # The browser side is not a server API: page pay still works.
    query = alipay.api_alipay_trade_page_pay("OK", "fault-3", "1.00")
    assert sbx.control.pay(sbx.gateway + "?" + query)["trade_no"]


def test_error_http500(sbx: SandboxProcess, alipay: AliPay) -> None:
    sbx.control.set_faults(error_rate=1.0, error_kind="http500")
    with pytest.raises(urllib.error.HTTPError) as caught:
        alipay.api_alipay_trade_query(out_trade_no="x")
    assert caught.value.code == 500


def test_error_timeout(sbx: SandboxProcess, sbx_keys: Path) -> None:
    client = make_client(sbx, sbx_keys, timeout=0.5)
    sbx.control.set_faults(error_rate=1.0, error_kind="timeout", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        client.api_alipay_trade_query(out_trade_no="x")
    assert time.monotonic() - started < 1.4


def test_latency_and_method_filter(sbx: SandboxProcess, alipay: AliPay) -> None:
    sbx.control.set_faults(latency_ms=300)
    started = time.monotonic()
    alipay.api_alipay_trade_query(out_trade_no="x")
    assert time.monotonic() - started >= 0.3

    faults = sbx.control.set_faults(
        latency_ms=0, error_rate=1.0, error_kind="20000", methods=["alipay.trade.refund"]
    )
    assert faults["methods"] == ["alipay.trade.refund"]
    assert alipay.api_alipay_trade_query(out_trade_no="x")["code"] == "40004"
    with pytest.raises(AliPayException):
        alipay.api_alipay_trade_refund("1.00", out_trade_no="x", out_request_no="1")
    assert sbx.control.faults()["error_rate"] == 1.0
    assert sbx.control.clear_faults()["error_rate"] == 0.0
    alipay.api_alipay_trade_refund("1.00", out_trade_no="x", out_request_no="1")


def test_partial_error_rate(sbx: SandboxProcess, alipay: AliPay) -> None:
    sbx.control.set_faults(error_rate=0.5)
    outcomes = []
    for _ in range(40):
        try:
            outcomes.append(alipay.api_alipay_trade_query(out_trade_no="x")["code"])
        except AliPayException:
            outcomes.append("20000")
    assert 0 < outcomes.count("20000") < 40


def test_bad_fault_settings(sbx: SandboxProcess) -> None:
    for bad in ({"error_rate": 2}, {"error_kind": "boom"}, {"nonsense": 1}, {"drop_return": 1}):
        with pytest.raises(SandboxError) as caught:
            sbx.control.set_faults(**bad)
        assert caught.value.status == 400
