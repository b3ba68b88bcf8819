"""Requests Alipay refuses: bad signatures, unknown app ids, bad methods, missing parameters."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException
from cryptography.hazmat.primitives.asymmetric import rsa

from alipay_sandbox.testing import SandboxProcess, check_envelope, fetch_raw, key_pair
from alipay_sandbox.tests.support import make_client, session


def raw_get(sbx: SandboxProcess, query: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(sbx.gateway + "?" + query, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


def signed_query(alipay: AliPay, method: str, biz: dict) -> list[tuple[str, str]]:
    return parse_qsl(alipay.sign_data(alipay.build_body(method, biz)), keep_blank_values=True)


def test_tampered_query_is_refused(sbx: SandboxProcess, alipay: AliPay) -> None:
    items = signed_query(alipay, "alipay.trade.query", {"out_trade_no": "abc"})
    tampered = [(k, v.replace("abc", "abd") if k == "biz_content" else v) for k, v in items]
    body = raw_get(sbx, urlencode(tampered))
    assert "sign" not in body
    node = body["alipay_trade_query_response"]
    assert node["code"] == "40002"
    assert node["sub_code"] == "isv.invalid-signature"

    # Through the SDK: a query string edited after signing.
    original = alipay.sign_data

    def tamper(data: dict) -> str:
        return original(data).replace("abc", "abd")

    alipay.sign_data = tamper  # type: ignore[method-assign]
    with pytest.raises(AliPayException) as caught:
        alipay.api_alipay_trade_query(out_trade_no="abc")
    assert "code:40002" in str(caught.value)
    assert "isv.invalid-signature" in str(caught.value)


def test_wrong_private_key_is_refused(sbx: SandboxProcess, sbx_keys: Path) -> None:
    other_private, _ = key_pair()
    client = make_client(sbx, sbx_keys, private_key=other_private.decode())
    with pytest.raises(AliPayException) as caught:
        client.api_alipay_trade_query(out_trade_no="abc")
    assert "code:40002" in str(caught.value)
    assert "isv.invalid-signature" in str(caught.value)
    page = session().get(
        sbx.gateway + "?" + client.api_alipay_trade_page_pay("S", "o-1", "1.00"), timeout=10
    )
    assert page.status_code == 400
    assert "isv.invalid-signature" in page.text
    assert sbx.control.notifications() == []


def test_unknown_app_id(sbx: SandboxProcess, sbx_keys: Path) -> None:
    client = make_client(sbx, sbx_keys, app_id="2021999999999999")
    with pytest.raises(AliPayException) as caught:
        client.api_alipay_trade_query(out_trade_no="abc")
    assert "code:40002" in str(caught.value)
    assert "isv.invalid-app-id" in str(caught.value)


def test_unknown_trade(alipay: AliPay, alipay_public_key: rsa.RSAPublicKey) -> None:
    result = alipay.api_alipay_trade_query(trade_no="2020010100000000000000000000")
    assert result["code"] == "40004"
    assert result["msg"] == "Business Failed"
    assert result["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    raw = fetch_raw(alipay, "alipay.trade.query", {"out_trade_no": "ghost"})
    assert check_envelope(raw, "alipay.trade.query", alipay_public_key)["code"] == "40004"


def test_unknown_method(sbx: SandboxProcess, alipay: AliPay) -> None:
    with pytest.raises(AliPayException) as caught:
        alipay.server_api("alipay.trade.nonsense", {"out_trade_no": "x"})
    assert "isv.invalid-method" in str(caught.value)


@pytest.mark.parametrize(
    ("drop", "sub_code"),
    [
        ("sign", "isv.missing-signature"),
        ("app_id", "isv.missing-app-id"),
        ("timestamp", "isv.missing-timestamp"),
        ("sign_type", "isv.missing-signature-type"),
    ],
)
def test_missing_parameters(sbx: SandboxProcess, alipay: AliPay, drop: str, sub_code: str) -> None:
    items = [
        (k, v)
        for k, v in signed_query(alipay, "alipay.trade.query", {"out_trade_no": "x"})
        if k != drop
    ]
    node = raw_get(sbx, urlencode(items))["alipay_trade_query_response"]
    assert node["code"] == "40001"
    assert node["sub_code"] == sub_code


def test_missing_method(sbx: SandboxProcess) -> None:
    body = raw_get(sbx, "app_id=1")
    assert body["error_response"]["sub_code"] == "isv.missing-method"


def test_rsa_sha1_clients_work(
    sbx: SandboxProcess, sbx_keys: Path, alipay_public_key: rsa.RSAPublicKey
) -> None:
    client = make_client(sbx, sbx_keys, sign_type="RSA")
    pay_url = (
        sbx.gateway
        + "?"
        + client.api_alipay_trade_page_pay(
            "SHA1", "sha1-1", "2.00", return_url="http://shop.test/r"
        )
    )
    paid = sbx.control.pay(pay_url)
    result = client.api_alipay_trade_query(out_trade_no="sha1-1")
    assert result["trade_status"] == "TRADE_SUCCESS"
    params = dict(parse_qsl(paid["return_url"].split("?", 1)[1]))
    assert params["sign_type"] == "RSA"
    signature = params.pop("sign")
    assert client.verify(params, signature)


def test_post_form_to_gateway(sbx: SandboxProcess, alipay: AliPay) -> None:
    data = alipay.sign_data(alipay.build_body("alipay.trade.query", {"out_trade_no": "p"}))
    response = session().post(
        sbx.gateway,
        data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
        timeout=10,
    )
    node = response.json()["alipay_trade_query_response"]
    assert node["sub_code"] == "ACQ.TRADE_NOT_EXIST"


@pytest.mark.slow
def test_control_api_off_by_default(sbx_keys: Path, tmp_path: Path) -> None:
    from alipay_sandbox.testing import start_sandbox

    other = start_sandbox(sbx_keys, tmp_path / "s.sqlite3", control=False)
    try:
        response = session().post(other.base_url + "/_sandbox/reset", timeout=10)
        assert response.status_code == 404
    finally:
        other.stop()
