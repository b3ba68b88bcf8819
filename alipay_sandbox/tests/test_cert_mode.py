"""Certificate mode (`--cert-dir`): a merchant with python-alipay-sdk's DCAliPay pays, requests
without the right serial numbers are refused, answers name the signing certificate, which can
be downloaded, renewed (trusted or not) and survives a restart; key mode has none of it."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException
from cryptography import x509

from alipay_sandbox import certs
from alipay_sandbox.client import SandboxError
from alipay_sandbox.testing import (
    SandboxProcess,
    check_envelope,
    fetch_raw,
    process_fixture,
    start_sandbox,
    write_test_keys,
)
from alipay_sandbox.tests.support import (
    NotifyReceiver,
    browser_pay,
    certificates,
    certified_key,
    make_cert_client,
    sdk_verifies,
    session,
    wait_for,
)

# DCAliPay reads certificates with pyOpenSSL's X509 API, which warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:X509.:DeprecationWarning")

QUERY = "alipay.trade.query"
ALIPAY_ROOT_SN = "687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6"
DOWNLOAD = "alipay.open.app.alipaycert.download"


@pytest.fixture(scope="module")
def cert_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Throwaway keys and the certificate-mode files issued for them."""
    directory = write_test_keys(tmp_path_factory.mktemp("cert-keys"))
    certs.write_setup(directory)
    return directory


def start_cert_sandbox(keys: Path, store: Path) -> SandboxProcess:
    return start_sandbox(keys, store, "--cert-dir", str(keys), name=store.stem)


@process_fixture(scope="module")
def cert_process(
    cert_keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxProcess]:
    handle = start_cert_sandbox(cert_keys, tmp_path_factory.mktemp("cert-store") / "cert.sqlite3")
    yield handle
    handle.stop()


@pytest.fixture
def cert_sbx(cert_process: SandboxProcess) -> SandboxProcess:
    """The certificate-mode sandbox, reset; never renewed (renewal tests start their own)."""
    cert_process.control.reset()
    return cert_process


@process_fixture
def own_cert_sbx(cert_keys: Path, tmp_path: Path) -> Iterator[SandboxProcess]:
    """A certificate-mode sandbox with a store of its own, for a test that renews."""
    handle = start_cert_sandbox(cert_keys, tmp_path / "own.sqlite3")
    yield handle
    handle.stop()


def raw_get(sbx: SandboxProcess, query: str) -> tuple[str, dict]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(sbx.gateway + "?" + query, timeout=10) as response:
        text = response.read().decode("utf-8")
    return text, json.loads(text)


def signed(client: AliPay, method: str, biz: dict, **changes: str | None) -> str:
    """A query signed with the app private key, with parameters changed (None: left out)
    before signing."""
    data = client.build_body(method, biz)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return client.sign_data(data)


def download(client: AliPay, cert_sn: str) -> dict:
    """Through the SDK, which verifies the answer with the certificate it was given."""
    return client.server_api(DOWNLOAD, {"alipay_cert_sn": cert_sn})


def downloaded(client: AliPay, cert_sn: str, answer_pem: bytes | None = None) -> bytes:
    """The certificate file ``cert_sn`` names, as a merchant fetches one it does not know: the
    answer is read raw and verified with ``answer_pem``'s key (default: with the downloaded
    certificate itself, which signs the answer when it is the current one)."""
    raw = fetch_raw(client, DOWNLOAD, {"alipay_cert_sn": cert_sn})
    node = json.loads(raw)["alipay_open_app_alipaycert_download_response"]
    assert node["code"] == "10000", node
    content = base64.b64decode(node["alipay_cert_content"])
    answer_sn_and_check(raw, DOWNLOAD, answer_pem or content)
    return content


def answer_sn_and_check(raw: str, method: str, pem: bytes) -> str:
    """The envelope verifies with the key certified by ``pem``; its ``alipay_cert_sn``."""
    check_envelope(raw, method, certified_key(pem))
    body = json.loads(raw)
    assert list(body) == [method.replace(".", "_") + "_response", "alipay_cert_sn", "sign"]
    return str(body["alipay_cert_sn"])


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def bundle_rsa_root(keys: Path) -> x509.Certificate:
    """The one RSA-signed root of the bundle (each block read alone: one of them does not
    parse)."""
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
        (keys / "alipayRootCert.crt").read_bytes(),
        re.S,
    )
    parsed = []
    for block in blocks:
        try:
            parsed.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    (root,) = [
        c
        for c in parsed
        if c.signature_algorithm_oid.dotted_string.startswith("1.2.840.113549.1.1.")
    ]
    return root


def chains_to_bundle(keys: Path, chain_pem: bytes) -> bool:
    """Whether a downloaded certificate file (leaf, then its CA) chains to the bundle's root."""
    leaf, issuer = certificates(chain_pem)
    return issued_by(leaf, issuer) and issued_by(issuer, bundle_rsa_root(keys))


def pay_with_notification(
    sbx: SandboxProcess, client: AliPay, out_trade_no: str, receiver: NotifyReceiver
) -> tuple[dict[str, str], dict[str, str]]:
    """Pay at the cashier: the return parameters and the notification received."""
    query = client.api_alipay_trade_page_pay(
        "Cert book", out_trade_no, "12.00", return_url="http://shop.test/r", notify_url=receiver.url
    )
    response, returned = browser_pay(sbx, client, query)
    assert response.status_code == 302
    form = wait_for(
        lambda: next((f for f in receiver.forms() if f["out_trade_no"] == out_trade_no), None)
    )
    return returned, form


def test_page_pay_flow_with_certificates(
    cert_sbx: SandboxProcess, cert_keys: Path, receiver: NotifyReceiver
) -> None:
    client = make_cert_client(cert_sbx, cert_keys)
    signing_pem = (cert_keys / "alipayCertPublicKey_RSA2.crt").read_bytes()
    state = cert_sbx.control.certs()
    assert state["mode"] == "cert"
    assert state["app_cert_sn"] == client.app_cert_sn
    assert state["root_cert_sn"] == client.alipay_root_cert_sn
    assert state["current"] == client.get_cert_sn(signing_pem.decode())

    returned, notification = pay_with_notification(cert_sbx, client, "cert-1", receiver)
    assert "alipay_cert_sn" not in returned and "alipay_cert_sn" not in notification
    assert client.verify({k: v for k, v in returned.items() if k != "sign"}, returned["sign"])
    assert sdk_verifies(cert_keys, certified_key(signing_pem), notification)
    assert notification["trade_status"] == "TRADE_SUCCESS"

    assert client.api_alipay_trade_query(out_trade_no="cert-1")["trade_status"] == "TRADE_SUCCESS"
    raw = fetch_raw(client, QUERY, {"out_trade_no": "cert-1"})
    assert answer_sn_and_check(raw, QUERY, signing_pem) == state["current"]
    refund = client.api_alipay_trade_refund("2.00", out_trade_no="cert-1", out_request_no="r1")
    assert refund["code"] == "10000" and refund["refund_fee"] == "2.00"
    # Business failures are signed and name the certificate too.
    raw = fetch_raw(client, QUERY, {"out_trade_no": "cert-ghost"})
    assert answer_sn_and_check(raw, QUERY, signing_pem) == state["current"]
    assert json.loads(raw)["alipay_trade_query_response"]["sub_code"] == "ACQ.TRADE_NOT_EXIST"

    wap = client.api_alipay_trade_wap_pay("W", "cert-wap-1", "3.00", product_code="QUICK_WAP_WAY")
    page = session().get(cert_sbx.gateway + "?" + wap, timeout=10)
    assert page.status_code == 200 and 'data-cashier="wap"' in page.text


CASES: dict[str, tuple[dict[str, str | None], str]] = {
    "missing app_cert_sn": ({"app_cert_sn": None}, "isv.invalid-app-cert-sn"),
    "wrong app_cert_sn": ({"app_cert_sn": "0" * 32}, "isv.invalid-app-cert-sn"),
    "missing alipay_root_cert_sn": (
        {"alipay_root_cert_sn": None},
        "isv.invalid-alipay-root-cert-sn",
    ),
    # Alipay's own root SN: right at Alipay, wrong here.
    "wrong alipay_root_cert_sn": (
        {"alipay_root_cert_sn": ALIPAY_ROOT_SN},
        "isv.invalid-alipay-root-cert-sn",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_requests_must_name_the_app_and_root_certificates(
    cert_sbx: SandboxProcess, cert_keys: Path, case: str
) -> None:
    changes, sub_code = CASES[case]
    client = make_cert_client(cert_sbx, cert_keys)
    current = cert_sbx.control.certs()["current"]

    _, body = raw_get(cert_sbx, signed(client, QUERY, {"out_trade_no": "x"}, **changes))
    assert set(body) == {"alipay_trade_query_response", "alipay_cert_sn"}  # unsigned
    assert body["alipay_cert_sn"] == current
    node = body["alipay_trade_query_response"]
    assert (node["code"], node["msg"], node["sub_code"]) == ("40002", "Invalid Arguments", sub_code)
    assert node["sub_msg"]

    for method, biz in (
        ("alipay.trade.page.pay", {"product_code": "FAST_INSTANT_TRADE_PAY"}),
        ("alipay.trade.wap.pay", {"product_code": "QUICK_WAP_WAY"}),
    ):
        biz = {**biz, "subject": "S", "out_trade_no": f"refused-{method}", "total_amount": "1.00"}
        query = signed(client, method, biz, **changes)
        page = session().get(cert_sbx.gateway + "?" + query, timeout=10)
        assert page.status_code == 400
        assert f'id="error-sub-code">{sub_code}<' in page.text
        with pytest.raises(SandboxError) as refused:
            cert_sbx.control.pay(cert_sbx.gateway + "?" + query)
        assert refused.value.payload["sub_code"] == sub_code
        with pytest.raises(SandboxError):
            cert_sbx.control.trade(f"refused-{method}")


def test_a_key_mode_client_is_refused(cert_sbx: SandboxProcess, cert_keys: Path) -> None:
    client = AliPay(
        "2021000000000001",
        app_private_key_string=(cert_keys / "app_private_key.pem").read_text(),
        alipay_public_key_string=(cert_keys / "alipay_public_key.pem").read_text(),
    )
    client._gateway = cert_sbx.gateway
    with pytest.raises(AliPayException) as caught:
        client.api_alipay_trade_query(out_trade_no="x")
    assert "isv.invalid-app-cert-sn" in str(caught.value)


def test_download_answers_the_signing_certificate(
    cert_sbx: SandboxProcess, cert_keys: Path
) -> None:
    client = make_cert_client(cert_sbx, cert_keys)
    signing_pem = (cert_keys / "alipayCertPublicKey_RSA2.crt").read_bytes()
    current = cert_sbx.control.certs()["current"]
    assert downloaded(client, current) == signing_pem
    assert base64.b64decode(download(client, current)["alipay_cert_content"]) == signing_pem

    unknown = download(client, "0123456789abcdef0123456789abcdef")  # verified by the SDK
    assert (unknown["code"], unknown["msg"], unknown["sub_code"]) == (
        "40004",
        "Business Failed",
        "isv.cert-not-exist",
    )
    with pytest.raises(AliPayException) as caught:
        client.server_api(DOWNLOAD, {})
    assert "isv.invalid-parameter" in str(caught.value)


def test_renewal_switches_the_key_of_answers_returns_and_notifications(
    own_cert_sbx: SandboxProcess, cert_keys: Path, receiver: NotifyReceiver
) -> None:
    sbx = own_cert_sbx
    client = make_cert_client(sbx, cert_keys)
    old_pem = (cert_keys / "alipayCertPublicKey_RSA2.crt").read_bytes()
    old_sn = sbx.control.certs()["current"]

    renewed = sbx.control.renew_cert()
    new_sn = renewed["alipay_cert_sn"]
    assert renewed["previous"] == old_sn and new_sn != old_sn
    # As a merchant does on an unknown alipay_cert_sn: download it, check its chain, use it.
    raw = fetch_raw(client, QUERY, {"out_trade_no": "renew-1"})
    assert json.loads(raw)["alipay_cert_sn"] == new_sn
    with pytest.raises(AssertionError):
        check_envelope(raw, QUERY, certified_key(old_pem))
    new_pem = downloaded(client, new_sn)
    assert chains_to_bundle(cert_keys, new_pem)
    new_leaf = certificates(new_pem)[0]
    assert new_leaf.subject == certificates(old_pem)[0].subject
    assert new_leaf.serial_number != certificates(old_pem)[0].serial_number
    assert answer_sn_and_check(raw, QUERY, new_pem) == new_sn
    # A certificate renewed away can still be fetched (the answer is signed with the new one).
    assert downloaded(client, old_sn, answer_pem=new_pem) == old_pem

    returned, notification = pay_with_notification(sbx, client, "renew-1", receiver)
    for params in (returned, notification):
        assert sdk_verifies(cert_keys, certified_key(new_pem), params)
        assert not sdk_verifies(cert_keys, certified_key(old_pem), params)

    state = sbx.control.certs()
    assert state["current"] == new_sn
    assert [(c["sn"], c["trusted"]) for c in state["issued"]] == [(old_sn, True), (new_sn, True)]
    assert state["issued"][1]["subject"].startswith("CN=Sandbox Alipay Gateway,")
    sbx.control.reset()  # trades go, the renewed certificate stays
    assert sbx.control.certs()["current"] == new_sn


def test_untrusted_renewal_does_not_chain_to_the_root(
    own_cert_sbx: SandboxProcess, cert_keys: Path
) -> None:
    sbx = own_cert_sbx
    client = make_cert_client(sbx, cert_keys)
    with pytest.raises(SandboxError) as bad:
        sbx.control._call("POST", "/_sandbox/certs/renew", {"untrusted": "yes"})
    assert bad.value.status == 400

    new_sn = sbx.control.renew_cert(untrusted=True)["alipay_cert_sn"]
    new_pem = downloaded(client, new_sn)
    leaf, issuer = certificates(new_pem)
    ca = certificates((cert_keys / "sandbox_ca/ca_cert.pem").read_bytes())[0]
    root = bundle_rsa_root(cert_keys)
    assert not issued_by(leaf, ca) and not issued_by(leaf, root)
    assert issued_by(leaf, issuer) and issued_by(issuer, issuer)  # a self-signed throwaway CA
    assert certs.to_pem(issuer) not in (cert_keys / "alipayRootCert.crt").read_bytes()
    assert not chains_to_bundle(cert_keys, new_pem)
    # The sandbox signs with it all the same: the merchant is the one to refuse it.
    raw = fetch_raw(client, QUERY, {"out_trade_no": "untrusted-1"})
    assert answer_sn_and_check(raw, QUERY, new_pem) == new_sn
    assert sbx.control.certs()["issued"][-1] == {
        "sn": new_sn,
        "subject": leaf.subject.rfc4514_string(),
        "not_after": leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "trusted": False,
    }


@pytest.mark.slow
def test_renewed_certificate_survives_a_restart(cert_keys: Path, tmp_path: Path) -> None:
    store = tmp_path / "restart.sqlite3"
    old_pem = (cert_keys / "alipayCertPublicKey_RSA2.crt").read_bytes()
    first = start_cert_sandbox(cert_keys, store)
    try:
        old_sn = first.control.certs()["current"]
        new_sn = first.control.renew_cert()["alipay_cert_sn"]
        new_pem = downloaded(make_cert_client(first, cert_keys), new_sn)
    finally:
        first.stop()
    second = start_cert_sandbox(cert_keys, store)
    try:
        state = second.control.certs()
        assert state["current"] == new_sn
        assert [c["sn"] for c in state["issued"]] == [old_sn, new_sn]
        client = make_cert_client(second, cert_keys)
        raw = fetch_raw(client, QUERY, {"out_trade_no": "restart-cert"})
        assert answer_sn_and_check(raw, QUERY, new_pem) == new_sn
        assert downloaded(client, old_sn, answer_pem=new_pem) == old_pem
        assert downloaded(client, new_sn) == new_pem
        assert second.control.renew_cert()["previous"] == new_sn
    finally:
        second.stop()


def test_key_mode_has_no_certificates(sbx: SandboxProcess, alipay: AliPay) -> None:
    assert sbx.control.certs() == {
        "mode": "key",
        "current": None,
        "issued": [],
        "app_cert_sn": None,
        "root_cert_sn": None,
    }
    with pytest.raises(SandboxError) as refused:
        sbx.control.renew_cert()
    assert refused.value.status == 409
    assert "alipay_cert_sn" not in json.loads(fetch_raw(alipay, QUERY, {"out_trade_no": "k"}))
    with pytest.raises(AliPayException) as caught:
        alipay.server_api(DOWNLOAD, {"alipay_cert_sn": "0" * 32})
    assert "code:40002" in str(caught.value) and "isv.invalid-cert-mode" in str(caught.value)
    # Serial numbers a key-mode app sends anyway are signed parameters like others, not checked.
    query = signed(alipay, QUERY, {"out_trade_no": "k"}, app_cert_sn="x", alipay_root_cert_sn="y")
    _, body = raw_get(sbx, query)
    assert body["alipay_trade_query_response"]["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    assert urlencode({"app_cert_sn": "x"}) in query
