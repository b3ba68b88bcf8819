"""The files of certificate mode (`python -m alipay_sandbox certs`): what is written and kept,
the chain, the root bundle's shape, and the serial numbers, checked against the SDK's and
Java's formula rather than the sandbox's own code."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alipay import DCAliPay
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from alipay_sandbox import certs
from alipay_sandbox.config import parse_config
from alipay_sandbox.signing import KeyFileError
from alipay_sandbox.testing import key_pair, write_test_keys
from alipay_sandbox.tests.support import APP_ID, certificates

# DCAliPay reads certificates with pyOpenSSL's X509 API, which warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:X509.:DeprecationWarning")

PEM_BLOCK_END = b"-----END CERTIFICATE-----"
SETUP_FILES = (
    "sandbox_ca/root_key.pem",
    "sandbox_ca/root_cert.pem",
    "sandbox_ca/ca_key.pem",
    "sandbox_ca/ca_cert.pem",
    "alipayRootCert.crt",
    "appCertPublicKey.crt",
    "alipayCertPublicKey_RSA2.crt",
)
CA_DN = "CN=Sandbox Alipay Class 2 CA R1,OU=Certification Authority,O=Sandbox Alipay,C=CN"
ROOT_DN = "CN=Sandbox Alipay Root CA R1,OU=Certification Authority,O=Sandbox Alipay,C=CN"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_test_keys(tmp_path_factory.mktemp("cert-setup"))
    certs.write_setup(directory)
    return directory


def java_sn(issuer_dn: str, certificate: x509.Certificate) -> str:
    """Java's AntCertificationUtil.getCertSN, written out: MD5(issuer DN + serial)."""
    return hashlib.md5((issuer_dn + str(certificate.serial_number)).encode()).hexdigest()


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def rsa_public(pem: bytes) -> rsa.RSAPublicKey:
    key = load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in SETUP_FILES}


@pytest.mark.slow
def test_certs_command_writes_the_setup_and_prints_its_serial_numbers(tmp_path: Path) -> None:
    keys = write_test_keys(tmp_path / "keys")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "alipay_sandbox",
                "certs",
                "--dir",
                "keys",
                "--app-id",
                "2021000000000002",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    first = run()
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[: len(SETUP_FILES)] == [f"wrote keys/{name}" for name in SETUP_FILES]
    for name in ("root_key.pem", "ca_key.pem"):
        assert stat.S_IMODE((keys / "sandbox_ca" / name).stat().st_mode) == 0o600
    app = certificates((keys / "appCertPublicKey.crt").read_bytes())[0]
    assert app.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "2021000000000002"
    )
    bundle = (keys / "alipayRootCert.crt").read_text()
    printed = dict(line.split() for line in lines[len(SETUP_FILES) :])
    assert printed == {
        "app_cert_sn": DCAliPay.get_cert_sn((keys / "appCertPublicKey.crt").read_text()),
        "alipay_cert_sn": DCAliPay.get_cert_sn((keys / "alipayCertPublicKey_RSA2.crt").read_text()),
        "alipay_root_cert_sn": DCAliPay.get_root_cert_sn(bundle),
    }

    before = snapshot(keys)
    again = run()
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "kept the existing files in keys"
    assert dict(line.split() for line in again.stdout.splitlines()[1:]) == printed
    assert snapshot(keys) == before


def test_setup_keeps_what_exists_and_issues_what_is_missing(tmp_path: Path) -> None:
    directory = write_test_keys(tmp_path)
    assert [p.relative_to(directory).as_posix() for p in certs.write_setup(directory)] == list(
        SETUP_FILES
    )
    before = snapshot(directory)
    assert certs.write_setup(directory) == []
    assert snapshot(directory) == before

    (directory / "appCertPublicKey.crt").unlink()
    assert certs.write_setup(directory) == [directory / "appCertPublicKey.crt"]
    after = snapshot(directory)
    assert after["appCertPublicKey.crt"] != before["appCertPublicKey.crt"]
    assert {k: v for k, v in after.items() if k != "appCertPublicKey.crt"} == {
        k: v for k, v in before.items() if k != "appCertPublicKey.crt"
    }
    ca = certificates(after["sandbox_ca/ca_cert.pem"])[0]
    assert issued_by(certificates(after["appCertPublicKey.crt"])[0], ca)


def test_setup_refuses_a_certificate_that_no_longer_fits_its_key(tmp_path: Path) -> None:
    directory = write_test_keys(tmp_path)
    certs.write_setup(directory)
    before = snapshot(directory)
    (directory / "app_public_key.pem").write_bytes(key_pair()[1])  # the app key was replaced
    with pytest.raises(certs.CertFileError, match="appCertPublicKey.crt"):
        certs.write_setup(directory)
    assert snapshot(directory) == before
    with pytest.raises(KeyFileError, match="app_public_key.pem"):
        certs.write_setup(tmp_path / "empty")


def test_setup_chain_app_and_signing_certificates(setup_dir: Path) -> None:
    root = certificates((setup_dir / "sandbox_ca/root_cert.pem").read_bytes())[0]
    ca = certificates((setup_dir / "sandbox_ca/ca_cert.pem").read_bytes())[0]
    app = certificates((setup_dir / "appCertPublicKey.crt").read_bytes())[0]
    signing_chain = certificates((setup_dir / "alipayCertPublicKey_RSA2.crt").read_bytes())
    assert root.subject.rfc4514_string() == root.issuer.rfc4514_string() == ROOT_DN
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued_by(root, root) and issued_by(ca, root)
    assert ca.subject.rfc4514_string() == CA_DN
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - root.not_valid_before_utc > timedelta(days=365 * 19)

    assert app.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == APP_ID
    assert app.public_key() == rsa_public((setup_dir / "app_public_key.pem").read_bytes())
    leaf, issuer = signing_chain  # the leaf, then its issuing CA, as Alipay's file
    assert issuer == ca
    assert leaf.subject.rfc4514_string().startswith("CN=Sandbox Alipay Gateway,")
    assert leaf.public_key() == rsa_public((setup_dir / "alipay_public_key.pem").read_bytes())
    now = datetime.now(UTC)
    for certificate in (app, leaf):
        assert issued_by(certificate, ca)
        assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)
        assert certificate.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.11"
        assert now - timedelta(days=2) < certificate.not_valid_before_utc < now
        lifetime = certificate.not_valid_after_utc - now
        assert timedelta(days=365 * 4) < lifetime < timedelta(days=365 * 6)
        assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_root_bundle_is_shaped_like_alipays(setup_dir: Path) -> None:
    data = (setup_dir / "alipayRootCert.crt").read_bytes()
    blocks = [part.strip() for part in data.split(b"\n\n")]  # blank lines between, as Alipay
    assert len(blocks) == 3 and all(block.endswith(PEM_BLOCK_END) for block in blocks)
    sm2, rsa_root, ecdsa = blocks

    # Alipay's NRCAC root: SM3withSM2, its key unreadable to `cryptography`.
    nrcac = x509.load_pem_x509_certificate(sm2)
    assert nrcac.subject.rfc4514_string() == "CN=ROOTCA,O=NRCAC,C=CN"
    assert nrcac.signature_algorithm_oid.dotted_string == "1.2.156.10197.1.501"
    with pytest.raises(Exception):  # noqa: B017 (UnsupportedAlgorithm or ValueError)
        nrcac.public_key()
    # The sandbox's RSA root.
    assert rsa_root + b"\n" == (setup_dir / "sandbox_ca/root_cert.pem").read_bytes()
    # Alipay's ECDSA root E1: `cryptography` refuses to parse it at all.
    assert b"MIICiDCCAgygAwIBAgIIQX76UsB/30ow" in ecdsa
    with pytest.raises(ValueError):
        x509.load_pem_x509_certificate(ecdsa)

    # The root SN counts the RSA-signed root only.
    root = x509.load_pem_x509_certificate(rsa_root)
    assert certs.root_cert_sn(data) == java_sn(ROOT_DN, root)
    assert "_" not in certs.root_cert_sn(data)
    assert DCAliPay.get_root_cert_sn(data.decode()) == certs.root_cert_sn(data)


def test_serial_numbers_follow_javas_formula(setup_dir: Path) -> None:
    for name in ("appCertPublicKey.crt", "alipayCertPublicKey_RSA2.crt"):
        pem = (setup_dir / name).read_bytes()
        leaf = certificates(pem)[0]
        assert certs.cert_sn(pem) == java_sn(CA_DN, leaf)
        assert certs.cert_sn(pem) == DCAliPay.get_cert_sn(pem.decode())  # pyOpenSSL's reading
    assert certs.setup_sns(setup_dir) == {
        "app_cert_sn": certs.cert_sn((setup_dir / "appCertPublicKey.crt").read_bytes()),
        "alipay_cert_sn": certs.cert_sn((setup_dir / "alipayCertPublicKey_RSA2.crt").read_bytes()),
        "alipay_root_cert_sn": certs.root_cert_sn((setup_dir / "alipayRootCert.crt").read_bytes()),
    }


def test_root_sn_reads_blocks_whatever_lies_between_them(setup_dir: Path) -> None:
    data = (setup_dir / "alipayRootCert.crt").read_bytes()
    blocks = certs.pem_certificates(data)
    crlf_without_blank_lines = b"\r\n".join(blocks).replace(b"\n", b"\r\n")
    assert certs.root_cert_sn(b"junk\n" + crlf_without_blank_lines) == certs.root_cert_sn(data)
    two_roots = data + b"\n" + (setup_dir / "sandbox_ca/ca_cert.pem").read_bytes()
    ca = certificates((setup_dir / "sandbox_ca/ca_cert.pem").read_bytes())[0]
    assert certs.root_cert_sn(two_roots) == certs.root_cert_sn(data) + "_" + java_sn(ROOT_DN, ca)
    with pytest.raises(ValueError):
        certs.root_cert_sn(blocks[0] + b"\n" + blocks[2])


def test_cert_dir_flag_and_variable() -> None:
    assert parse_config([], {}).cert_dir is None
    assert parse_config([], {"ALIPAY_SANDBOX_CERT_DIR": "/x"}).cert_dir == Path("/x")
    assert parse_config(["--cert-dir", "keys"], {"ALIPAY_SANDBOX_CERT_DIR": "/x"}).cert_dir == (
        Path("keys")
    )


@pytest.mark.slow
def test_bad_cert_dir_stops_start_up_with_one_line(setup_dir: Path, tmp_path: Path) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "alipay_sandbox",
                "--port",
                "0",
                "--store",
                str(tmp_path / "s.sqlite3"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    other_key = tmp_path / "other_private_key.pem"
    other_key.write_bytes(key_pair()[0])
    cases = [
        (
            (
                "--alipay-private-key",
                str(setup_dir / "alipay_private_key.pem"),
                "--cert-dir",
                str(tmp_path / "nowhere"),
            ),
            "appCertPublicKey.crt",
        ),
        (
            ("--alipay-private-key", str(other_key), "--cert-dir", str(setup_dir)),
            "alipayCertPublicKey_RSA2.crt",
        ),
    ]
    for args, named in cases:
        result = start(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], result.stderr
