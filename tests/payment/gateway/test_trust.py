"""Which Alipay keys verify: certificate chains against Alipay's real files and forged ones,
and key mode's switch between two Alipay public keys."""
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command

from payment import gateway, metrics
from payment.gateway import certs, trust
from payment.gateway.keys import generate_key_pair
from tests.support import sign_params

CERTS = Path(__file__).parent / "fixtures" / "certs"
ANT_CLASS2 = x509.Name([
    x509.NameAttribute(x509.oid.NameOID.COUNTRY_NAME, "CN"),
    x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "Ant Financial"),
    x509.NameAttribute(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME, "Certification Authority"),
    x509.NameAttribute(x509.oid.NameOID.COMMON_NAME,
                       "Ant Financial Certification Authority Class 2 R1"),
])


def read(name: str) -> bytes:
    return (CERTS / name).read_bytes()


def test_alipays_real_certificate_chains_to_alipays_real_root_in_its_time() -> None:
    # go-pay's alipayCertPublicKey_RSA2.crt: Alipay's certificate, then the Class 2 R1 CA
    # that issued it, which Ant Financial R1 in alipayRootCert.crt signed (2019-08-30 on).
    leaf = certs.chain_verify(read("gopay/alipayCertPublicKey_RSA2.crt"),
                              read("gopay/alipayRootCert.crt"), at=datetime(2020, 6, 1, tzinfo=UTC))
    assert certs.certificate_sn(leaf) == "04afd423ea5bd6f5c5482854ed73278c"


def test_a_certificate_past_its_end_is_refused() -> None:
    with pytest.raises(certs.ChainError, match="expired on 2021-08-29"):
        certs.chain_verify(read("gopay/alipayCertPublicKey_RSA2.crt"),
                           read("gopay/alipayRootCert.crt"), at=datetime(2022, 1, 1, tzinfo=UTC))


def test_a_leaf_without_its_issuing_ca_does_not_chain() -> None:
    # The Node SDK's file holds the leaf alone: its issuer is not a root.
    with pytest.raises(certs.ChainError, match="Class 2 R1"):
        certs.chain_verify(read("nodejs/alipayCertPublicKey_RSA2.crt"),
                           read("nodejs/alipayRootCert.crt"), at=datetime(2021, 1, 1, tzinfo=UTC))


def _certificate(subject: x509.Name, issuer: x509.Name, public_key: Any,
                 signer: rsa.RSAPrivateKey, *, ca: bool,
                 start: datetime, end: datetime) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


def test_a_forged_ca_with_alipays_name_does_not_chain() -> None:
    """Names are not trust: an intermediate named like Ant's Class 2 R1, signed by a key that
    is not Ant Financial R1's, is refused, and so is a leaf it issued."""
    now = datetime.now(UTC)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    real_ca = x509.load_pem_x509_certificates(read("gopay/alipayCertPublicKey_RSA2.crt"))[1]
    root_name = real_ca.issuer
    fake_ca = _certificate(ANT_CLASS2, root_name, forger.public_key(), forger, ca=True,
                           start=now - timedelta(days=1), end=now + timedelta(days=30))
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _certificate(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Alipay")]),
                        ANT_CLASS2, leaf_key.public_key(), forger, ca=False,
                        start=now - timedelta(days=1), end=now + timedelta(days=30))
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in (leaf, fake_ca))
    with pytest.raises(certs.ChainError, match="no certificate in the file signed it"):
        certs.chain_verify(chain, read("gopay/alipayRootCert.crt"), at=now)


@pytest.fixture
def two_alipay_keys(tmp_path: Path, settings: Any) -> Iterator[dict[str, Any]]:
    """Key mode with Alipay's old and new public key in one file, as during a key switch."""
    old_private, old_public = generate_key_pair()
    new_private, new_public = generate_key_pair()
    path = tmp_path / "alipay_public_key.pem"
    path.write_bytes(old_public + new_public)
    settings.ALIPAY_PUBLIC_KEY_PATH = path
    # The shop's own key too: the test must not depend on `alipay_keys` having been run.
    app_private, _ = generate_key_pair()
    settings.ALIPAY_APP_PRIVATE_KEY_PATH = tmp_path / "app_private_key.pem"
    settings.ALIPAY_APP_PRIVATE_KEY_PATH.write_bytes(app_private)
    settings.ALIPAY_KEYS_REFRESH_SECONDS = 0
    gateway.clients_reset()
    yield {"old": old_private, "new": new_private, "path": path, "new_public": new_public,
           "old_public": old_public}
    gateway.clients_reset()


def _notification(private_key: bytes) -> dict[str, str]:
    return sign_params({"out_trade_no": "o1", "trade_no": "t1", "total_amount": "1.00",
                        "trade_status": "TRADE_SUCCESS", "charset": "utf-8"}, private_key)


def _verified_count(key_id: str) -> float:
    return float(metrics._metrics().signatures_verified.labels(key=key_id, kind="params")
                 ._value.get())


def test_either_alipay_key_verifies_during_a_switch_and_the_metric_says_which(
        two_alipay_keys: dict[str, Any]) -> None:
    old_id, new_id = (key.key_id for key in trust.trusted_keys())
    before = {old_id: _verified_count(old_id), new_id: _verified_count(new_id)}
    assert gateway.signature_valid(_notification(two_alipay_keys["old"]))
    assert gateway.signature_valid(_notification(two_alipay_keys["new"]))
    assert gateway.signature_valid(_notification(two_alipay_keys["new"]))
    stranger, _ = generate_key_pair()
    assert not gateway.signature_valid(_notification(stranger))
    assert _verified_count(old_id) - before[old_id] == 1
    assert _verified_count(new_id) - before[new_id] == 2


def test_a_rewritten_key_file_is_read_again_without_a_restart(
        two_alipay_keys: dict[str, Any]) -> None:
    path: Path = two_alipay_keys["path"]
    path.write_bytes(two_alipay_keys["old_public"])  # the old key alone, at first
    gateway.clients_reset()
    signed = _notification(two_alipay_keys["new"])
    generation = gateway.alipay_keys_generation()
    assert not gateway.signature_valid(signed)
    assert not gateway.alipay_keys_refresh(generation)  # nothing changed: no second look
    path.write_bytes(two_alipay_keys["old_public"] + two_alipay_keys["new_public"] + b"\n")
    assert gateway.alipay_keys_refresh(generation)
    assert gateway.signature_valid(signed)


def test_alipay_certs_lists_both_keys(two_alipay_keys: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    call_command("alipay_certs")
    out = capsys.readouterr().out
    assert "mode: key" in out
    for key in trust.trusted_keys():
        assert key.key_id in out
    assert "keys)" not in out and ": 2" in out
