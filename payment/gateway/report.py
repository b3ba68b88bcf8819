"""What the operators see of the keys and certificates in use: `manage.py alipay_certs`, the
dashboard, and the metric `shop_alipay_certificate_days_left`."""
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError

from payment.gateway import certs, trust
from payment.gateway.client import app_private_key_read


@dataclass(frozen=True)
class CertificateInfo:
    role: str  # app, alipay, root
    sn: str
    subject: str
    not_after: datetime
    source: str  # the file, or "downloaded"
    problem: str = ""  # why it is not usable; empty when it is
    downloaded_at: datetime | None = None

    def days_left(self, now: datetime | None = None) -> float:
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400


def certificates_report(now: datetime | None = None, *,
                        downloaded: bool = True) -> list[CertificateInfo]:
    """Every certificate certificate mode uses (none in key mode): the app's, Alipay's as
    configured and (`downloaded`, from the database) as downloaded since, and the root
    file's RSA roots."""
    if trust.mode() != trust.CERT_MODE:
        return []
    now = now or datetime.now(UTC)
    found: list[CertificateInfo] = []
    found.extend(_app_certificate(now))
    root_text = ""
    try:
        root_text = trust.read_text(settings.ALIPAY_ROOT_CERT_PATH, "Alipay root certificate file")
    except trust.KeyFileError as exc:
        found.append(CertificateInfo("root", "", "", now, str(settings.ALIPAY_ROOT_CERT_PATH),
                                     str(exc)))
    found.extend(_alipay_certificate(root_text, now))
    if downloaded:
        found.extend(_downloaded(root_text, now))
    for certificate in certs.certificates_read(root_text):
        if certificate.signature_algorithm_oid.dotted_string.startswith(
                certs.RSA_SIGNATURE_OID_PREFIX):
            found.append(_info("root", certificate, str(settings.ALIPAY_ROOT_CERT_PATH),
                               _validity_problem(certificate, now)))
    return found


def _info(role: str, certificate: certs.x509.Certificate, source: str,
          problem: str = "") -> CertificateInfo:
    return CertificateInfo(role, certs.certificate_sn(certificate),
                           certs.java_rfc2253_name(certificate.subject),
                           certificate.not_valid_after_utc, source, problem)


def _validity_problem(certificate: certs.x509.Certificate, now: datetime) -> str:
    if now > certificate.not_valid_after_utc:
        return "expired"
    if now < certificate.not_valid_before_utc:
        return "not valid yet"
    return ""


def _app_certificate(now: datetime) -> list[CertificateInfo]:
    path = settings.ALIPAY_APP_CERT_PATH
    try:
        certificate = trust.certificate_read(path, "App certificate")
    except trust.KeyFileError as exc:
        return [CertificateInfo("app", "", "", now, str(path), str(exc))]
    problem = _validity_problem(certificate, now)
    try:
        if certificate.public_key() != app_private_key_read().public_key():
            problem = problem or "not for the app private key"
    except trust.KeyFileError as exc:
        problem = problem or str(exc)
    return [_info("app", certificate, str(path), problem)]


def _alipay_certificate(root_text: str, now: datetime) -> list[CertificateInfo]:
    path = settings.ALIPAY_CERT_PATH
    try:
        text = trust.read_text(path, "Alipay certificate")
        certificate = trust.certificate_read(path, "Alipay certificate")
    except trust.KeyFileError as exc:
        return [CertificateInfo("alipay", "", "", now, str(path), str(exc))]
    return [_info("alipay", certificate, str(path), _chain_problem(text, root_text, now))]


def _downloaded(root_text: str, now: datetime) -> list[CertificateInfo]:
    from payment.models import AlipayCertificate

    try:
        rows = list(AlipayCertificate.objects.order_by("-downloaded_at")[:20])
    except DatabaseError:
        return []
    found = []
    for row in rows:
        problem = row.refusal or _chain_problem(row.pem, root_text, now)
        found.append(CertificateInfo("alipay", row.sn, row.subject, row.not_after,
                                     "downloaded", problem, row.downloaded_at))
    return found


def _chain_problem(text: str, root_text: str, now: datetime) -> str:
    try:
        certs.chain_verify(text, root_text, at=now)
    except certs.ChainError as exc:
        return str(exc)
    return ""
