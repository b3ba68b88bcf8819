"""Which Alipay keys this process trusts, and which of them signed what.

Key mode (the default): the RSA public keys in `ALIPAY_PUBLIC_KEY_PATH`, one, or several
while a merchant switches keys in Alipay's console; the file is read again when it changes.

Certificate mode (`ALIPAY_APP_CERT_PATH`, `ALIPAY_CERT_PATH`, `ALIPAY_ROOT_CERT_PATH`): Alipay's
certificate as configured, and each certificate Alipay renewed to since, downloaded once
(`AlipayCertificate` rows) and trusted only while its chain to the configured root holds.
An answer names its certificate (`alipay_cert_sn`); returns and notifications do not, and are
verified with every trusted certificate, the newest first (the current one and, during a
renewal, the previous).

Every key has an id: the certificate's serial number, or `key-` and 12 hex digits of the
SHA-256 of the public key (what `manage.py alipay_certs` prints), counted in the metric
`shop_alipay_signatures_verified_total` for each signature it verified.
"""
import base64
import binascii
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import Certificate
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from payment import metrics
from payment.gateway import certs

if TYPE_CHECKING:
    from payment.models import AlipayCertificate

logger = logging.getLogger(__name__)

CERT_MODE = "certificate"
KEY_MODE = "key"
# Any advisory lock number, the same in every process: one download of a certificate at once.
_DOWNLOAD_LOCK = 0x616C6970  # "alip"


class KeyFileError(Exception):
    """A configured key or certificate file is missing, unreadable, not PEM, or not usable."""


class CertificateUntrusted(Exception):
    """Alipay's answer names a certificate that does not chain to the configured root (or
    could not be fetched as Alipay's): nothing it signed is believed."""


@dataclass(frozen=True)
class AlipayKey:
    key_id: str
    public_key: rsa.RSAPublicKey
    subject: str = ""
    not_after: datetime | None = None
    source: str = "configured"  # or "downloaded"


class Download(NamedTuple):
    """What `alipay.open.app.alipaycert.download` answered: the certificate file, and the
    answer's own signed text, signature and signing certificate."""

    pem: str
    signed_text: str
    signature: str
    answer_sn: str


def mode() -> str:
    return CERT_MODE if _cert_paths() else KEY_MODE


def _cert_paths() -> tuple[Path | None, ...]:
    paths = (settings.ALIPAY_APP_CERT_PATH, settings.ALIPAY_CERT_PATH,
             settings.ALIPAY_ROOT_CERT_PATH)
    return paths if any(paths) else ()


def read_text(path: Path | None, what: str) -> str:
    if path is None:
        raise KeyFileError(f"{what}: no path is set for it.")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise KeyFileError(
            f"{what} {path} cannot be read ({reason}); run `python manage.py alipay_keys` "
            "(with `--sandbox` for the local sandbox's files) or set its path in the "
            "environment."
        ) from None
    if "-----BEGIN" not in text:
        raise KeyFileError(f"{what} {path} is not a PEM file.")
    return text


def key_id(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "key-" + hashlib.sha256(der).hexdigest()[:12]


_PUBLIC_KEY = re.compile(r"-----BEGIN (?:RSA )?PUBLIC KEY-----.+?-----END (?:RSA )?PUBLIC KEY-----",
                         re.DOTALL)


def public_keys_read(path: Path) -> list[AlipayKey]:
    """Each RSA public key of a PEM file, in file order (the new key may come first or last)."""
    text = read_text(path, "Alipay public key file")
    keys = []
    for block in _PUBLIC_KEY.findall(text):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"Alipay public key file {path} holds a key that is not "
                               "readable PEM.") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFileError(f"Alipay public key file {path} holds a key that is not RSA.")
        keys.append(AlipayKey(key_id(key), key))
    if not keys:
        raise KeyFileError(f"Alipay public key file {path} holds no public key.")
    return keys


def certificate_key(certificate: Certificate, *, source: str) -> AlipayKey:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"{certs.java_rfc2253_name(certificate.subject)!r} is not an RSA "
                           "certificate.")
    return AlipayKey(certs.certificate_sn(certificate), key,
                     subject=certs.java_rfc2253_name(certificate.subject),
                     not_after=certificate.not_valid_after_utc, source=source)


def certificate_read(path: Path | None, what: str) -> Certificate:
    """The first certificate of a PEM file (a chain counts by its leaf)."""
    found = certs.certificates_read(read_text(path, what))
    if not found:
        raise KeyFileError(f"{what} {path} holds no readable certificate.")
    return found[0]


@cache
def root_text() -> str:
    return read_text(settings.ALIPAY_ROOT_CERT_PATH, "Alipay root certificate file")


@cache
def request_sns() -> tuple[str, str]:
    """`app_cert_sn` and `alipay_root_cert_sn`, which every request carries in this mode."""
    app_certificate = certificate_read(settings.ALIPAY_APP_CERT_PATH, "App certificate")
    try:
        root_sn = certs.root_cert_sn(root_text())
    except ValueError as exc:
        raise KeyFileError(f"Alipay root certificate file {settings.ALIPAY_ROOT_CERT_PATH}: "
                           f"{exc}.") from None
    return certs.certificate_sn(app_certificate), root_sn


def _configured_keys() -> list[AlipayKey]:
    if mode() == KEY_MODE:
        return public_keys_read(settings.ALIPAY_PUBLIC_KEY_PATH)
    certificate = certificate_read(settings.ALIPAY_CERT_PATH, "Alipay certificate")
    return [certificate_key(certificate, source="configured")]


def _stored_keys(configured: set[str]) -> list[AlipayKey]:
    """The downloaded certificates whose chain holds now, newest first."""
    from payment.models import AlipayCertificate

    keys = []
    now = datetime.now(UTC)
    for row in AlipayCertificate.objects.filter(refusal="").order_by("-downloaded_at"):
        if row.sn in configured:
            continue
        try:
            certificate = certs.chain_verify(row.pem, root_text(), at=now)
            keys.append(certificate_key(certificate, source="downloaded"))
        except (certs.ChainError, KeyFileError) as exc:
            logger.warning("alipay certificate %s not used: %s", row.sn, exc)
    return keys


class _Trusted:
    """The process's trusted keys: loaded on first use, again when asked to refresh."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.refresh_lock = threading.Lock()
        self.keys: tuple[AlipayKey, ...] | None = None
        self.generation = 0
        self.refreshed_at = float("-inf")
        self.file_stamp: tuple[int, int] | None = None

    def get(self) -> tuple[AlipayKey, ...]:
        keys = self.keys
        if keys is None:
            with self.lock:
                if self.keys is None:
                    self._load()
                keys = self.keys
        assert keys is not None
        return keys

    def _load(self) -> None:
        configured = _configured_keys()
        stored: list[AlipayKey] = []
        if mode() == CERT_MODE:
            try:
                stored = _stored_keys({key.key_id for key in configured})
            except (DatabaseError, SynchronousOnlyOperation) as exc:
                # The database away, or first use on an event loop: the configured certificate
                # works meanwhile, and a refresh (on a thread) reads the others.
                logger.info("alipay certificates not read from the database error=%s",
                            type(exc).__name__)
        keys = tuple(stored + configured)
        self.file_stamp = _file_stamp(settings.ALIPAY_PUBLIC_KEY_PATH)
        if self.keys is None or [k.key_id for k in keys] != [k.key_id for k in self.keys]:
            self.generation += 1
        self.keys = keys

    def add(self, key: AlipayKey) -> None:
        with self.lock:
            current = self.get()
            if all(k.key_id != key.key_id for k in current):
                self.keys = (key, *current)
                self.generation += 1


_trusted = _Trusted()


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def trusted_keys() -> tuple[AlipayKey, ...]:
    return _trusted.get()


def keys_generation() -> int:
    """Changes whenever the trusted keys do: a caller whose check failed at one generation
    and sees another may check again."""
    _trusted.get()
    return _trusted.generation


def keys_refresh(seen_generation: int, probe: Callable[[], None]) -> bool:
    """After a signature that no trusted key verified: True when the trusted keys changed
    since `seen_generation` (here, or in another thread meanwhile), so that it is worth
    checking again.

    At most once per `ALIPAY_KEYS_REFRESH_SECONDS` per process: key mode reads the public key
    file again if it changed; certificate mode reads the downloaded certificates again and, if
    none is new, calls `probe` (one signed call to Alipay, whose answer names Alipay's
    current certificate and so downloads it if it is new). Junk signatures cost no more.
    """
    # One refresh at a time in a process: the others wait for its outcome, which is theirs.
    with _trusted.refresh_lock:
        if keys_generation() != seen_generation:
            return True
        if time.monotonic() - _trusted.refreshed_at < settings.ALIPAY_KEYS_REFRESH_SECONDS:
            return False
        _trusted.refreshed_at = time.monotonic()
        if mode() == KEY_MODE:
            if _file_stamp(settings.ALIPAY_PUBLIC_KEY_PATH) != _trusted.file_stamp:
                try:
                    with _trusted.lock:
                        _trusted._load()
                except KeyFileError as exc:  # half-written: keep the keys in use
                    logger.warning("alipay public keys not reloaded: %s", exc)
            return keys_generation() != seen_generation
        with _trusted.lock:
            _trusted._load()
        if keys_generation() != seen_generation:
            return True
        try:
            probe()
        except Exception as exc:  # noqa: BLE001  (Alipay away, refused: the check stays failed)
            logger.warning("alipay certificate probe failed error=%s", type(exc).__name__)
        return keys_generation() != seen_generation


def signature_key(message: bytes, signature: str, *,
                  keys: tuple[AlipayKey, ...] | None = None) -> AlipayKey | None:
    """The trusted key (or one of `keys`) that verifies RSA2 `signature` over `message`."""
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    for key in trusted_keys() if keys is None else keys:
        try:
            key.public_key.verify(raw_signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return key
    return None


def signature_verified(message: bytes, signature: str, *, kind: str) -> bool:
    key = signature_key(message, signature)
    if key is None:
        return False
    metrics.signature_verified(key_id=key.key_id, kind=kind)
    return True


def answer_key(sn: str, download: Callable[[str], Download]) -> AlipayKey:
    """The key of the certificate an answer names; an unknown one is downloaded (once, by one
    process at a time), its chain checked against the root and its validity dates, stored,
    and then used. Raises `CertificateUntrusted` for one that does not chain."""
    for key in trusted_keys():
        if key.key_id == sn:
            return key
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DOWNLOAD_LOCK])
        # (SQLite: the transaction itself is taken IMMEDIATE, one writer at a time.)
        key_or_refusal = _stored_or_downloaded(sn, download)
    # Raised once the transaction is over: a refused certificate stays stored, with why.
    if isinstance(key_or_refusal, str):
        raise CertificateUntrusted(key_or_refusal)
    _trusted.add(key_or_refusal)
    return key_or_refusal


def _stored_or_downloaded(sn: str, download: Callable[[str], Download]) -> AlipayKey | str:
    """The certificate's key, or why it is not trusted."""
    from payment.models import AlipayCertificate

    row = AlipayCertificate.objects.filter(sn=sn).first()
    if row is None:
        row = _download_store(sn, download)
    if row.refusal:
        return f"Alipay certificate {sn} refused: {row.refusal}"
    try:
        certificate = certs.chain_verify(row.pem, root_text(), at=datetime.now(UTC))
    except certs.ChainError as exc:
        return f"Alipay certificate {sn} no longer trusted: {exc}"
    return certificate_key(certificate, source="downloaded")


def _download_store(sn: str, download: Callable[[str], Download]) -> "AlipayCertificate":
    from payment.models import AlipayCertificate

    got = download(sn)
    now = datetime.now(UTC)
    refusal = ""
    certificate: Certificate | None = None
    try:
        certificate = certs.chain_verify(got.pem, root_text(), at=now)
        if certs.certificate_sn(certificate) != sn:
            raise certs.ChainError(f"it is certificate {certs.certificate_sn(certificate)}, "
                                   f"not {sn}")
        _download_answer_check(got, certificate)
    except certs.ChainError as exc:
        refusal = str(exc)[:500]
        found = certs.certificates_read(got.pem)
        certificate = found[0] if found else None
    metrics.certificate_downloaded(outcome="refused" if refusal else "trusted")
    if refusal:
        logger.error("alipay certificate %s refused: %s", sn, refusal)
    else:
        logger.warning("alipay certificate %s downloaded and trusted (Alipay renewed its "
                       "certificate)", sn)
    return AlipayCertificate.objects.create(
        sn=sn, pem=got.pem[:20000], refusal=refusal, downloaded_at=timezone.now(),
        subject=certs.java_rfc2253_name(certificate.subject)[:500] if certificate else "",
        not_before=certificate.not_valid_before_utc if certificate else now,
        not_after=certificate.not_valid_after_utc if certificate else now,
    )


def _download_answer_check(got: Download, certificate: Certificate) -> None:
    """The download's own answer is signed by Alipay's current certificate: the one just
    downloaded (a renewal), or one already trusted."""
    if got.answer_sn == certs.certificate_sn(certificate):
        keys: tuple[AlipayKey, ...] = (certificate_key(certificate, source="downloaded"),)
    else:
        keys = tuple(k for k in trusted_keys() if k.key_id == got.answer_sn)
    if signature_key(got.signed_text.encode(), got.signature, keys=keys) is None:
        raise certs.ChainError("the download's answer is not signed by Alipay's certificate")


def trust_reset() -> None:
    """Forget what was loaded (after the settings change, in tests)."""
    global _trusted
    _trusted = _Trusted()
    root_text.cache_clear()
    request_sns.cache_clear()
