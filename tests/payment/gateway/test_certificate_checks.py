"""What start-up, the operators' command, the metric and the dashboard say of certificate
mode's files: each way a file can be wrong is named, and what is fine is shown with its days
left. The files are the sandbox's, as `manage.py alipay_keys --sandbox --cert` writes them."""
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import Client

from alipay_sandbox import certs as sandbox_certs
from payment import gateway
from payment.gateway import certs
from payment.gateway.keys import generate_key_pair, write_keys
from payment.metrics import certificate_families
from tests.support import APP_ID

REAL_ALIPAY_ROOT = Path(__file__).parent / "fixtures" / "certs" / "gopay" / "alipayRootCert.crt"


@pytest.fixture
def cert_files(tmp_path: Path, settings: Any) -> Iterator[Path]:
    write_keys(tmp_path, sandbox=True)
    sandbox_certs.write_setup(tmp_path, app_id=APP_ID)
    settings.ALIPAY_APP_PRIVATE_KEY_PATH = tmp_path / "app_private_key.pem"
    settings.ALIPAY_APP_CERT_PATH = tmp_path / "appCertPublicKey.crt"
    settings.ALIPAY_CERT_PATH = tmp_path / "alipayCertPublicKey_RSA2.crt"
    settings.ALIPAY_ROOT_CERT_PATH = tmp_path / "alipayRootCert.crt"
    gateway.clients_reset()
    yield tmp_path
    gateway.clients_reset()


def _errors() -> list[str]:
    gateway.clients_reset()
    return [m.msg for m in run_checks() if m.id == "payment.E001"]


def _issue_app_certificate(folder: Path, public_key: rsa.RSAPublicKey, days: int) -> None:
    ca_key = serialization.load_pem_private_key(
        (folder / "sandbox_ca" / "ca_key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    ca = x509.load_pem_x509_certificate((folder / "sandbox_ca" / "ca_cert.pem").read_bytes())
    certificate = sandbox_certs.issue(subject=sandbox_certs.app_name(APP_ID),
                                      public_key=public_key, issuer=ca, issuer_key=ca_key,
                                      days=days, ca=False)
    (folder / "appCertPublicKey.crt").write_bytes(sandbox_certs.to_pem(certificate))


def test_the_sandboxs_files_pass_and_serial_numbers_agree(cert_files: Path) -> None:
    assert _errors() == []
    # Two implementations (the sandbox's and ours) give the same serial numbers.
    expected = sandbox_certs.setup_sns(cert_files)
    app_sn, root_sn = gateway.trust.request_sns()
    assert (app_sn, root_sn) == (expected["app_cert_sn"], expected["alipay_root_cert_sn"])
    assert certs.cert_sn((cert_files / "alipayCertPublicKey_RSA2.crt").read_bytes()) == \
        expected["alipay_cert_sn"]


def test_an_app_certificate_for_another_key_stops_start_up(cert_files: Path) -> None:
    _, other_public = generate_key_pair()
    other = serialization.load_pem_public_key(other_public)
    assert isinstance(other, rsa.RSAPublicKey)
    _issue_app_certificate(cert_files, other, days=365)
    [error] = _errors()
    assert "is not for the app private key" in error and "appCertPublicKey.crt" in error


def test_alipays_certificate_not_chaining_to_the_root_stops_start_up(
        cert_files: Path) -> None:
    # Alipay's real root file: the sandbox's CA is not in it.
    (cert_files / "alipayRootCert.crt").write_bytes(REAL_ALIPAY_ROOT.read_bytes())
    [error] = _errors()
    assert "alipayCertPublicKey_RSA2.crt is not trusted" in error
    assert "is not a root of the root file" in error


def test_half_a_certificate_setup_is_named(cert_files: Path, settings: Any) -> None:
    settings.ALIPAY_ROOT_CERT_PATH = None
    [error] = _errors()
    assert "ALIPAY_ROOT_CERT_PATH not set" in error


def test_a_missing_certificate_file_is_named(cert_files: Path) -> None:
    (cert_files / "alipayCertPublicKey_RSA2.crt").unlink()
    [error] = _errors()
    assert "alipayCertPublicKey_RSA2.crt cannot be read" in error


@pytest.mark.django_db  # downloaded certificates are read from the database
def test_a_certificate_near_its_end_warns_and_the_command_shows_it(
        cert_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app_key = serialization.load_pem_private_key(
        (cert_files / "app_private_key.pem").read_bytes(), password=None)
    assert isinstance(app_key, rsa.RSAPrivateKey)
    _issue_app_certificate(cert_files, app_key.public_key(), days=10)
    gateway.clients_reset()
    warnings = [m for m in run_checks() if m.id == "payment.W002"]
    assert len(warnings) == 1 and "expires in 10 days" in warnings[0].msg
    call_command("alipay_certs")
    out = capsys.readouterr().out
    assert "mode: certificate" in out and "(10 days left)" in out
    assert "chain to the root holds" in out


@pytest.mark.django_db  # downloaded certificates are read from the database
def test_the_command_fails_on_an_unusable_file(cert_files: Path) -> None:
    (cert_files / "alipayRootCert.crt").write_bytes(REAL_ALIPAY_ROOT.read_bytes())
    with pytest.raises(CommandError, match="not trusted"):
        call_command("alipay_certs")


@pytest.mark.django_db  # downloaded certificates are read from the database
def test_the_metric_gives_each_certificates_days_left(cert_files: Path) -> None:
    [family] = certificate_families()
    samples = {(s.labels["role"], s.labels["usable"]): s.value for s in family.samples}
    assert set(samples) == {("app", "1"), ("alipay", "1"), ("root", "1")}
    assert 1820 < samples[("app", "1")] < 1830  # the sandbox issues for five years
    assert samples[("root", "1")] > 7000


@pytest.mark.django_db
def test_the_dashboard_lists_the_certificates_in_use(cert_files: Path,
                                                     admin_client: Client) -> None:
    page = admin_client.get("/admin/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="section-certificates"' in html
    expected = sandbox_certs.setup_sns(cert_files)
    for role, name in (("app", "app_cert_sn"), ("alipay", "alipay_cert_sn"),
                       ("root", "alipay_root_cert_sn")):
        assert f'data-figure="certificates.{role}.{expected[name]}.days_left"' in html


@pytest.mark.django_db
def test_the_dashboard_has_no_certificates_in_key_mode(admin_client: Client) -> None:
    page = admin_client.get("/admin/dashboard/")
    assert page.status_code == 200
    assert 'id="section-certificates"' not in page.content.decode()
