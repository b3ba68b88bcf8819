"""Alipay's certificate serial numbers (公钥证书模式): `app_cert_sn`, `alipay_cert_sn`,
`alipay_root_cert_sn`, computed as Alipay's own SDKs compute them.

Java's `AntCertificationUtil.getCertSN` hashes
`cert.getIssuerX500Principal().getName() + cert.getSerialNumber()`: the issuer DN in RFC 2253
form (most specific attribute first, `,` without spaces, keywords only for CN, L, ST, O, OU, C,
STREET, DC, UID, any other attribute as `<oid>=#<DER hex>`), then the serial in decimal; MD5,
lowercase hex, 32 digits. `cryptography`'s `Name.rfc4514_string()` is close but not Java's:
Java escapes `=` and `#` anywhere and prints attributes without a keyword (emailAddress,
serialNumber) as `<oid>=#<DER hex>`; `java_rfc2253_name` follows Java (checked with JDK 17).

Pure functions: no settings, no network, no files.
"""
import hashlib
import logging
import re
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

logger = logging.getLogger(__name__)

# Java checks `getSigAlgOID().startsWith("1.2.840.113549.1.1")`, the Node SDK
# `signatureOID.startsWith(...)`: every PKCS#1 signature (sha1WithRSA, sha256WithRSA, ...).
RSA_SIGNATURE_OID_PREFIX = "1.2.840.113549.1.1."

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def cert_sn(pem: bytes | str) -> str:
    """The `app_cert_sn` / `alipay_cert_sn` of a PEM certificate file.

    A file holding a chain (Alipay's `alipayCertPublicKey_RSA2.crt` carries its issuing CA
    too) counts by its first certificate, as Java's `generateCertificate` and Go's
    `pem.Decode` read it. Raises `ValueError` when no certificate can be read.
    """
    blocks = pem_certificates(pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return certificate_sn(x509.load_pem_x509_certificate(blocks[0]))


def root_cert_sn(pem_bundle: bytes | str) -> str:
    """The `alipay_root_cert_sn` of Alipay's root file (`alipayRootCert.crt`).

    The SNs of the bundle's RSA-signed certificates, in file order, joined with `_`.
    Certificates that cannot be parsed (the SM2 root's curve is unknown to `cryptography`)
    are skipped, as gopay does: they are never RSA-signed. Raises `ValueError` when no
    RSA-signed certificate is left, since an empty value would only fail later at Alipay.
    """
    sns = []
    for block in pem_certificates(pem_bundle):
        try:
            certificate = x509.load_pem_x509_certificate(block)
            signature_oid = certificate.signature_algorithm_oid.dotted_string
        except ValueError as exc:
            logger.debug("root certificate skipped, not parsed: %s", exc)
            continue
        if signature_oid.startswith(RSA_SIGNATURE_OID_PREFIX):
            sns.append(certificate_sn(certificate))
    if not sns:
        raise ValueError("no RSA-signed certificate in the root certificate bundle")
    return "_".join(sns)


def certificate_sn(certificate: x509.Certificate) -> str:
    """MD5 of the issuer DN (RFC 2253 string) followed by the decimal serial number."""
    issuer_and_serial = java_rfc2253_name(certificate.issuer) + str(certificate.serial_number)
    # Java's `String.getBytes()` uses the platform charset; UTF-8 is what Alipay's Linux
    # servers and the other SDKs use (and Alipay's issuer names are ASCII anyway).
    return hashlib.md5(issuer_and_serial.encode("utf-8")).hexdigest()


def pem_certificates(pem: bytes | str) -> list[bytes]:
    """Each `BEGIN/END CERTIFICATE` block of a PEM text, in order; whatever lies between the
    blocks (blank lines or not, CRLF, comments) is ignored."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    return _PEM_CERTIFICATE.findall(data)


# Java's RFC 2253 keywords (sun.security.x509.AVAKeyword, rfc2253Compliant).
_JAVA_RFC2253_KEYWORDS = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
}
_JAVA_RFC2253_ESCAPED = set(',=+<>#;"\\')
# How a string value is encoded for each ASN.1 string tag (anything else: Latin-1 bytes).
_TAG_CODECS = {12: "utf-8", 28: "utf-32-be", 30: "utf-16-be"}


def java_rfc2253_name(name: x509.Name) -> str:
    """`X500Principal.getName()` (RFC 2253) of a name, as OpenJDK's `sun.security.x509.AVA`
    prints it: last RDN first, `,` between RDNs, `+` inside one."""
    return ",".join(
        "+".join(_java_rfc2253_attribute(attribute) for attribute in rdn)
        for rdn in reversed(name.rdns)
    )


def _java_rfc2253_attribute(attribute: x509.NameAttribute) -> str:
    keyword = _JAVA_RFC2253_KEYWORDS.get(attribute.oid)
    if keyword is None:
        return f"{attribute.oid.dotted_string}=#{_der_string(attribute).hex()}"
    value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode()
    escaped = "".join(
        "\\00" if c == "\0" else "\\" + c if c in _JAVA_RFC2253_ESCAPED else c for c in value
    )
    stripped = escaped.strip(" \r")
    if stripped != escaped:  # leading and trailing spaces (and CRs) are escaped one by one
        start = len(escaped) - len(escaped.lstrip(" \r"))
        end = start + len(stripped)
        escaped = (
            "".join("\\" + c for c in escaped[:start])
            + stripped
            + "".join("\\" + c for c in escaped[end:])
        )
    return f"{keyword}={escaped}"


def _der_string(attribute: x509.NameAttribute) -> bytes:
    """The DER encoding of a string attribute value (tag, length, content)."""
    tag = attribute._type.value  # the ASN.1 string type the certificate used
    value = attribute.value
    content = value if isinstance(value, bytes) else value.encode(_TAG_CODECS.get(tag, "latin-1"))
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(size_bytes)]) + size_bytes
    return bytes([tag]) + length + content


class ChainError(ValueError):
    """A certificate that must not be trusted: unreadable, outside its validity, or not
    issued (directly or through the file's intermediates) by a certificate of the root file."""


def certificates_read(pem: bytes | str) -> list[x509.Certificate]:
    """The certificates of a PEM text that `cryptography` can read, in order (Alipay's root
    file holds an SM2 root it cannot, and an ECDSA root it may refuse: skipped)."""
    certificates = []
    for block in pem_certificates(pem):
        try:
            certificate = x509.load_pem_x509_certificate(block)
            certificate.signature_algorithm_oid  # noqa: B018  (refused here by some versions)
        except ValueError as exc:
            logger.debug("certificate skipped, not parsed: %s", exc)
            continue
        certificates.append(certificate)
    return certificates


def chain_verify(chain_pem: bytes | str, roots_pem: bytes | str, *,
                 at: datetime) -> x509.Certificate:
    """The first certificate of `chain_pem`, once it is shown to descend from a root.

    As the Java SDK's `AntCertificationUtil.isTrusted`: every certificate on the way is
    within its validity at `at`, each is signed by the next (the file's own intermediates,
    which Alipay ships after the leaf), and the last by a certificate of the root file whose
    name is its issuer. Raises `ChainError` saying why not.
    """
    chain = certificates_read(chain_pem)
    if not chain:
        raise ChainError("no certificate could be read")
    roots = certificates_read(roots_pem)
    if not roots:
        raise ChainError("the root file holds no readable certificate")
    leaf = current = chain[0]
    intermediates = chain[1:]
    for _ in range(len(chain) + 1):
        _validity_check(current, at)
        for root in roots:
            if root.subject == current.issuer and _issued_by(current, root):
                _validity_check(root, at)
                return leaf
        issuer = next((c for c in intermediates
                       if c.subject == current.issuer and _issued_by(current, c)
                       and _is_ca(c)), None)
        if issuer is None:
            raise ChainError(f"issuer {java_rfc2253_name(current.issuer)!r} is not a root "
                             "of the root file, and no certificate in the file signed it")
        intermediates.remove(issuer)
        current = issuer
    raise ChainError("the chain does not end at a root")


def _validity_check(certificate: x509.Certificate, at: datetime) -> None:
    if at < certificate.not_valid_before_utc:
        raise ChainError(f"{java_rfc2253_name(certificate.subject)!r} is not valid before "
                         f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if at > certificate.not_valid_after_utc:
        raise ChainError(f"{java_rfc2253_name(certificate.subject)!r} expired on "
                         f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return True  # version 1 certificates (older CAs) carry no extensions
