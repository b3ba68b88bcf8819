"""Alipay's public-key-certificate mode (公钥证书模式), the sandbox's side of it: serial numbers,
the sandbox's own certificate authority, and the files it issues.

``python -m alipay_sandbox certs --dir keys`` (or :func:`write_setup`) reads the merchant's
``app_public_key.pem`` and the sandbox's ``alipay_private_key.pem`` and writes, keeping every
file that exists:

- ``sandbox_ca/root_key.pem``, ``sandbox_ca/root_cert.pem``: the sandbox's RSA root CA;
- ``sandbox_ca/ca_key.pem``, ``sandbox_ca/ca_cert.pem``: the intermediate ("Class 2") CA that
  issues the leaf certificates, as Alipay's "Class 2 R1" does;
- ``alipayRootCert.crt``: the root bundle, shaped like Alipay's (see ``data/README.md``);
- ``appCertPublicKey.crt``: the merchant's app certificate (its public key, CN = the app id);
- ``alipayCertPublicKey_RSA2.crt``: the sandbox's signing certificate, then its issuing CA.

A serial number (SN) is the MD5 of the issuer DN (RFC 2253, most specific first) followed by the
serial in decimal, as Java's ``AntCertificationUtil.getCertSN``. The sandbox prints the DN with
``cryptography``'s ``rfc4514_string()``, which is Java's for the plain ASCII CN/OU/O/C names it
issues (the merchant side of this project follows Java for any name).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .config import DEFAULT_APP_ID
from .signing import KeyFileError, load_private_key, load_public_key, read_file

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
# Java: getSigAlgOID().startsWith("1.2.840.113549.1.1"): every PKCS#1 RSA signature.
RSA_SIGNATURE_OID_PREFIX = "1.2.840.113549.1.1."

# The files of a setup, relative to its directory.
APP_PUBLIC_KEY = "app_public_key.pem"
ALIPAY_PRIVATE_KEY = "alipay_private_key.pem"
ROOT_KEY = "sandbox_ca/root_key.pem"
ROOT_CERT = "sandbox_ca/root_cert.pem"
CA_KEY = "sandbox_ca/ca_key.pem"
CA_CERT = "sandbox_ca/ca_cert.pem"
ROOT_BUNDLE = "alipayRootCert.crt"
APP_CERT = "appCertPublicKey.crt"
ALIPAY_CERT = "alipayCertPublicKey_RSA2.crt"

ROOT_DAYS = 7305  # about 20 years
CA_DAYS = 5479  # about 15 years
LEAF_DAYS = 1826  # about 5 years
BACKDATE = timedelta(days=1)  # valid from a day ago: clocks a little behind still accept it


def _name(common_name: str, unit: str, organization: str = "Sandbox Alipay") -> x509.Name:
    # Country first: printed most specific first, as CN=...,OU=...,O=...,C=CN (Alipay's shape).
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


ROOT_NAME = _name("Sandbox Alipay Root CA R1", "Certification Authority")
CA_NAME = _name("Sandbox Alipay Class 2 CA R1", "Certification Authority")
GATEWAY_NAME = _name("Sandbox Alipay Gateway", "Alipay")
UNTRUSTED_CA_NAME = _name("Sandbox Untrusted CA", "Not In The Root Bundle")


def app_name(app_id: str) -> x509.Name:
    return _name(app_id, "Alipay", "Sandbox Merchant")


class CertFileError(KeyFileError):
    """A certificate file is missing, unreadable, or does not fit the other files of its
    setup; the message names the file."""


# -- serial numbers -----------------------------------------------------------------------
def pem_certificates(data: bytes) -> list[bytes]:
    """Each ``BEGIN/END CERTIFICATE`` block, in order, whatever lies between them."""
    return PEM_CERTIFICATE.findall(data)


def certificate_sn(certificate: x509.Certificate) -> str:
    issuer_and_serial = certificate.issuer.rfc4514_string() + str(certificate.serial_number)
    return hashlib.md5(issuer_and_serial.encode("utf-8")).hexdigest()


def cert_sn(pem: bytes) -> str:
    """The SN of a certificate file: of its first certificate (a chain file names its leaf)."""
    blocks = pem_certificates(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return certificate_sn(x509.load_pem_x509_certificate(blocks[0]))


def rsa_roots(bundle: bytes) -> list[x509.Certificate]:
    """The bundle's RSA-signed certificates, in file order; the ones ``cryptography`` cannot
    parse are skipped (Alipay's ECDSA root): they are not RSA-signed."""
    roots = []
    for block in pem_certificates(bundle):
        try:
            certificate = x509.load_pem_x509_certificate(block)
            oid = certificate.signature_algorithm_oid.dotted_string
        except ValueError:
            continue
        if oid.startswith(RSA_SIGNATURE_OID_PREFIX):
            roots.append(certificate)
    return roots


def root_cert_sn(bundle: bytes) -> str:
    """``alipay_root_cert_sn``: the SNs of the bundle's RSA-signed certificates, joined by
    ``_``. ValueError when there is none."""
    roots = rsa_roots(bundle)
    if not roots:
        raise ValueError("no RSA-signed certificate in the root bundle")
    return "_".join(certificate_sn(root) for root in roots)


# -- issuing ------------------------------------------------------------------------------
def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def to_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=not signs_certificates,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    *,
    subject: x509.Name,
    public_key: rsa.RSAPublicKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    days: int,
    ca: bool,
    path_length: int | None = None,
) -> x509.Certificate:
    """A sha256WithRSA certificate; ``issuer`` None: self-signed (a root)."""
    now = datetime.now(UTC)
    issuer_public = issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(signs_certificates=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def issue_root(key: rsa.RSAPrivateKey, name: x509.Name = ROOT_NAME) -> x509.Certificate:
    return issue(
        subject=name,
        public_key=key.public_key(),
        issuer=None,
        issuer_key=key,
        days=ROOT_DAYS,
        ca=True,
    )


def issue_ca(
    key: rsa.RSAPrivateKey, root: x509.Certificate, root_key: rsa.RSAPrivateKey
) -> x509.Certificate:
    return issue(
        subject=CA_NAME,
        public_key=key.public_key(),
        issuer=root,
        issuer_key=root_key,
        days=CA_DAYS,
        ca=True,
        path_length=0,
    )


def issue_leaf(
    subject: x509.Name,
    public_key: rsa.RSAPublicKey,
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
) -> x509.Certificate:
    return issue(
        subject=subject,
        public_key=public_key,
        issuer=ca,
        issuer_key=ca_key,
        days=LEAF_DAYS,
        ca=False,
    )


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def chains_to(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
) -> bool:
    """Whether ``leaf`` is signed by one of ``roots``, directly or through ``intermediates``
    (signatures and names only: the sandbox issues every certificate it checks)."""
    current = leaf
    for _ in range(len(intermediates) + 1):
        if any(issued_by(current, root) for root in roots):
            return True
        parent = next((ca for ca in intermediates if issued_by(current, ca)), None)
        if parent is None or parent == current:
            return False
        current = parent
    return False


def same_key(certificate: x509.Certificate, public_key: rsa.RSAPublicKey) -> bool:
    def spki(key: object) -> bytes:
        assert isinstance(key, rsa.RSAPublicKey)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    try:
        certified = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    return isinstance(certified, rsa.RSAPublicKey) and spki(certified) == spki(public_key)


def _alipay_root(name: str) -> bytes:
    """One of Alipay's public roots shipped in ``data/`` (PEM, one trailing newline)."""
    return (resources.files("alipay_sandbox") / "data" / name).read_bytes().strip() + b"\n"


def root_bundle(root: x509.Certificate) -> bytes:
    """``alipayRootCert.crt`` shaped like Alipay's: the NRCAC SM2 root (not RSA-signed), the
    sandbox's RSA root, Alipay's ECDSA root E1 (refused by ``cryptography``), blank lines
    between them."""
    sm2_root = _alipay_root("nrcac_sm2_root.crt")
    ecdsa_root = _alipay_root("ant_financial_e1_root.crt")
    return b"\n".join((sm2_root, to_pem(root), ecdsa_root))


# -- reading files ------------------------------------------------------------------------
def read_bytes(path: Path, what: str) -> bytes:
    return read_file(path, what, CertFileError)


def read_certificates(path: Path, what: str = "certificate file") -> list[x509.Certificate]:
    """Every certificate of a PEM file; CertFileError when there is none or one is bad."""
    blocks = pem_certificates(read_bytes(path, what))
    if not blocks:
        raise CertFileError(f"no PEM certificate in {what} {path}")
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError:
        raise CertFileError(f"unreadable certificate in {what} {path}") from None


def read_rsa_public_key(certificate: x509.Certificate, path: Path) -> rsa.RSAPublicKey:
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertFileError(f"not an RSA certificate: {path}")
    return key


# -- writing a setup ----------------------------------------------------------------------
def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file (never over an existing one) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_file(path: Path, written: list[Path]) -> rsa.RSAPrivateKey:
    if path.exists():
        return load_private_key(path)
    key = new_key()
    _create(path, key_pem(key), 0o600)
    written.append(path)
    return key


def _cert_file(
    path: Path, written: list[Path], make: Callable[[], list[x509.Certificate]]
) -> x509.Certificate:
    """The first certificate of ``path``; made (with the rest of its chain) when missing."""
    if path.exists():
        return read_certificates(path)[0]
    chain = make()
    _create(path, b"".join(to_pem(certificate) for certificate in chain), 0o644)
    written.append(path)
    return chain[0]


def _mismatch(path: Path, why: str) -> CertFileError:
    return CertFileError(f"{path} {why}; delete it to issue a new one")


def write_setup(directory: Path, app_id: str = DEFAULT_APP_ID) -> list[Path]:
    """Issue the certificate-mode files in ``directory`` (see the module docstring) from its
    ``app_public_key.pem`` and ``alipay_private_key.pem``. Files that exist are kept (checked
    to fit the others); returns the paths written. Raises KeyFileError (CertFileError)."""
    directory = Path(directory)
    app_public_key = load_public_key(directory / APP_PUBLIC_KEY)
    alipay_key = load_private_key(directory / ALIPAY_PRIVATE_KEY)
    (directory / CA_CERT).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []

    root_key = _key_file(directory / ROOT_KEY, written)
    root = _cert_file(directory / ROOT_CERT, written, lambda: [issue_root(root_key)])
    if not same_key(root, root_key.public_key()):
        raise _mismatch(directory / ROOT_CERT, f"does not hold the key of {ROOT_KEY}")
    ca_key = _key_file(directory / CA_KEY, written)
    ca = _cert_file(directory / CA_CERT, written, lambda: [issue_ca(ca_key, root, root_key)])
    if not same_key(ca, ca_key.public_key()) or not issued_by(ca, root):
        raise _mismatch(directory / CA_CERT, f"does not fit {CA_KEY} and {ROOT_CERT}")

    bundle_path = directory / ROOT_BUNDLE
    if bundle_path.exists():
        if root not in rsa_roots(read_bytes(bundle_path, "root bundle")):
            raise _mismatch(bundle_path, f"does not hold {ROOT_CERT}")
    else:
        _create(bundle_path, root_bundle(root), 0o644)
        written.append(bundle_path)

    app_path = directory / APP_CERT
    app = _cert_file(
        app_path, written, lambda: [issue_leaf(app_name(app_id), app_public_key, ca, ca_key)]
    )
    if not same_key(app, app_public_key) or not issued_by(app, ca):
        raise _mismatch(app_path, f"does not fit {APP_PUBLIC_KEY} and {CA_CERT}")

    alipay_path = directory / ALIPAY_CERT
    alipay = _cert_file(
        alipay_path,
        written,
        lambda: [issue_leaf(GATEWAY_NAME, alipay_key.public_key(), ca, ca_key), ca],
    )
    if not same_key(alipay, alipay_key.public_key()) or not issued_by(alipay, ca):
        raise _mismatch(alipay_path, f"does not fit {ALIPAY_PRIVATE_KEY} and {CA_CERT}")
    return written


def setup_sns(directory: Path) -> dict[str, str]:
    """The three SNs of a setup's files: ``app_cert_sn``, ``alipay_cert_sn``,
    ``alipay_root_cert_sn``."""
    directory = Path(directory)
    try:
        return {
            "app_cert_sn": certificate_sn(read_certificates(directory / APP_CERT)[0]),
            "alipay_cert_sn": certificate_sn(read_certificates(directory / ALIPAY_CERT)[0]),
            "alipay_root_cert_sn": root_cert_sn(read_bytes(directory / ROOT_BUNDLE, "bundle")),
        }
    except ValueError as exc:
        raise CertFileError(f"{directory / ROOT_BUNDLE}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m alipay_sandbox certs``: issue the certificate-mode files."""
    parser = argparse.ArgumentParser(
        prog="python -m alipay_sandbox certs",
        description=(
            "Issue the files of Alipay's certificate mode for the sandbox: its CA, the root"
            " bundle, the app certificate and the sandbox's signing certificate. Reads"
            f" DIR/{APP_PUBLIC_KEY} and DIR/{ALIPAY_PRIVATE_KEY}; keeps files that exist."
        ),
    )
    # The server's variables, so that one environment serves both (a flag wins).
    app_ids = os.environ.get("ALIPAY_SANDBOX_APP_IDS", "").split(",")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("ALIPAY_SANDBOX_CERT_DIR") or "keys"),
        help="default: $ALIPAY_SANDBOX_CERT_DIR, else keys",
    )
    parser.add_argument(
        "--app-id",
        default=app_ids[0].strip() or DEFAULT_APP_ID,
        help=f"CN of the app certificate (default: the first of $ALIPAY_SANDBOX_APP_IDS, else"
        f" {DEFAULT_APP_ID})",
    )
    args = parser.parse_args(argv)
    try:
        written = write_setup(args.dir, args.app_id)
        sns = setup_sns(args.dir)
    except KeyFileError as exc:
        print(f"alipay_sandbox certs: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"kept the existing files in {args.dir}")
    for name, value in sns.items():
        print(f"{name:<20} {value}")
    return 0
