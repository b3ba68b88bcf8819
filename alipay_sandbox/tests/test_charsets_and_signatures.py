"""charset=gbk requests and notifications; empty parameters in what is signed, both ways."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode, urlsplit

import pytest
from alipay import AliPay
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from alipay_sandbox.config import DEFAULT_APP_ID
from alipay_sandbox.signing import string_to_sign
from alipay_sandbox.testing import SandboxProcess, node_text, verify_rsa2
from alipay_sandbox.tests.support import NotifyReceiver, cn_time, decode_form, session, wait_for

SUBJECT = "中文商品 GBK测试"


def app_key(keys: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(
        (keys / "app_private_key.pem").read_bytes(), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def signed_query(
    keys: Path,
    method: str,
    biz: dict,
    charset: str = "gbk",
    keep_empty: bool = True,
    **extra: str,
) -> str:
    """A request built and signed by hand as a merchant set up for ``charset`` does."""
    params = {
        "app_id": DEFAULT_APP_ID,
        "method": method,
        "charset": charset,
        "sign_type": "RSA2",
        "timestamp": cn_time(0),
        "version": "1.0",
        "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        **extra,
    }
    message = string_to_sign(params, exclude=("sign",), keep_empty=keep_empty)
    signature = app_key(keys).sign(message.encode(charset), padding.PKCS1v15(), hashes.SHA256())
    params["sign"] = base64.b64encode(signature).decode()
    return urlencode(params, encoding=charset)


def verify_in(pub: rsa.RSAPublicKey, message: str, signature: str, encoding: str) -> bool:
    try:
        pub.verify(
            base64.b64decode(signature),
            message.encode(encoding),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except Exception:
        return False
    return True


def get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_gbk_page_pay_return_and_notification(
    sbx: SandboxProcess,
    sbx_keys: Path,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    biz = {
        "out_trade_no": "gbk-1",
        "total_amount": "12.00",
        "subject": SUBJECT,
        "product_code": "FAST_INSTANT_TRADE_PAY",
    }
    query = signed_query(
        sbx_keys,
        "alipay.trade.page.pay",
        biz,
        notify_url=receiver.url,
        return_url="http://shop.test/back",
    )
    assert SUBJECT.encode("utf-8") not in unquote_to_bytes(query)  # GBK on the wire
    page = session().get(sbx.gateway + "?" + query, timeout=10)
    assert page.status_code == 200, page.text
    assert SUBJECT in page.text

    paid = sbx.control.pay(sbx.gateway + "?" + query)
    back = dict(parse_qsl(urlsplit(paid["return_url"]).query, encoding="gbk"))
    assert back["charset"] == "gbk"
    unsigned = string_to_sign(back, exclude=("sign", "sign_type"), keep_empty=True)
    assert verify_in(alipay_public_key, unsigned, back["sign"], "gbk")

    (note,) = wait_for(receiver.forms)
    (received,) = receiver.received
    assert received["content_type"].endswith("charset=gbk")
    raw_subject = dict(parse_qsl(received["raw"].decode("ascii"), encoding="latin-1"))["subject"]
    assert raw_subject.encode("latin-1") == SUBJECT.encode("gbk")
    assert note == decode_form(received["raw"])
    assert note["charset"] == "gbk" and note["subject"] == SUBJECT
    unsigned = string_to_sign(note, exclude=("sign", "sign_type"), keep_empty=True)
    assert verify_in(alipay_public_key, unsigned, note["sign"], "gbk")
    assert not verify_in(alipay_public_key, unsigned, note["sign"], "utf-8")

    # Later notifications of the trade keep its charset.
    refund = signed_query(
        sbx_keys,
        "alipay.trade.refund",
        {"out_trade_no": "gbk-1", "refund_amount": "2.00", "out_request_no": "退款-1"},
    )
    status, _, _ = get(sbx.gateway + "?" + refund)
    assert status == 200
    forms = wait_for(lambda: len(receiver.forms()) == 2 and receiver.forms())
    assert forms[1]["charset"] == "gbk" and forms[1]["out_biz_no"] == "退款-1"


def test_gbk_server_api_answers_in_gbk(
    sbx: SandboxProcess, sbx_keys: Path, alipay_public_key: rsa.RSAPublicKey
) -> None:
    method = "alipay.trade.query"
    status, content_type, body = get(
        sbx.gateway + "?" + signed_query(sbx_keys, method, {"out_trade_no": "甲-1"})
    )
    assert status == 200 and content_type.endswith("charset=gbk")
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    raw = body.decode("gbk")
    node = json.loads(raw)["alipay_trade_query_response"]
    assert node["sub_code"] == "ACQ.TRADE_NOT_EXIST" and node["sub_msg"] == "交易不存在"
    assert verify_in(alipay_public_key, node_text(raw, method), json.loads(raw)["sign"], "gbk")


def test_gbk_request_signed_over_other_bytes_or_unknown_charset_is_refused(
    sbx: SandboxProcess, sbx_keys: Path
) -> None:
    # Signed over UTF-8 bytes but declared GBK: the signature does not hold.
    params = dict(
        parse_qsl(
            signed_query(sbx_keys, "alipay.trade.query", {"out_trade_no": "甲"}, "utf-8"),
            encoding="utf-8",
        )
    )
    params["charset"] = "gbk"
    _, _, body = get(sbx.gateway + "?" + urlencode(params, encoding="gbk"))
    node = json.loads(body.decode("gbk"))["alipay_trade_query_response"]
    assert node["sub_code"] == "isv.invalid-signature"

    other = dict(parse_qsl(signed_query(sbx_keys, "alipay.trade.query", {}, "utf-8")))
    other["charset"] = "big5"
    _, _, body = get(sbx.gateway + "?" + urlencode(other))
    assert json.loads(body)["alipay_trade_query_response"]["sub_code"] == "isv.invalid-charset"


def test_sdk_request_with_an_empty_parameter_verifies(
    sbx: SandboxProcess, alipay: AliPay, sbx_keys: Path
) -> None:
    # python-alipay-sdk signs empty parameters too (app_auth_token= here).
    answer = alipay.server_api("alipay.trade.query", {"out_trade_no": "e-1"}, app_auth_token="")
    assert answer["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    # The official SDKs leave empty parameters out of what they sign: accepted as well.
    query = signed_query(
        sbx_keys, "alipay.trade.query", {"out_trade_no": "e-1"}, "utf-8", False, app_auth_token=""
    )
    _, _, body = get(sbx.gateway + "?" + query)
    assert json.loads(body)["alipay_trade_query_response"]["sub_code"] == "ACQ.TRADE_NOT_EXIST"


def test_empty_parameters_are_signed_in_returns_and_notifications(
    sbx: SandboxProcess,
    alipay: AliPay,
    alipay_public_key: rsa.RSAPublicKey,
    receiver: NotifyReceiver,
) -> None:
    sbx.control.set_settings(empty_param_rate=1.0)
    query = alipay.api_alipay_trade_page_pay(
        "Empty", "empty-1", "3.00", return_url="http://shop.test/r", notify_url=receiver.url
    )
    paid = sbx.control.pay(sbx.gateway + "?" + query)
    back = dict(parse_qsl(urlsplit(paid["return_url"]).query, keep_blank_values=True))
    (note,) = wait_for(receiver.forms)
    for params in (back, note):
        empty = [key for key, value in params.items() if value == ""]
        assert empty and set(empty) <= {"passback_params", "isv_ticket"}, params
        kept = string_to_sign(params, exclude=("sign", "sign_type"), keep_empty=True)
        dropped = string_to_sign(params, exclude=("sign", "sign_type"))
        assert f"{empty[0]}=&" in kept + "&"
        assert verify_rsa2(alipay_public_key, kept, params["sign"])
        assert not verify_rsa2(alipay_public_key, dropped, params["sign"])
        data = dict(params)
        signature = data.pop("sign")
        assert alipay.verify(data, signature)  # the SDK keeps empty values too
