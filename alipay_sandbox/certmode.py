"""Certificate mode at run time (``--cert-dir``): what requests must name, the certificate the
sandbox signs with now, its renewal, and the certificates it has signed with.

The directory is one written by ``python -m alipay_sandbox certs`` (see :mod:`.certs`). Renewed
signing certificates and their keys are kept in the store (table ``signing_certs``), tagged
with the setup's intermediate CA: a restart signs with the last one renewed; a store used with
another certificate directory starts from that directory's certificate.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import certs
from .certs import CertFileError
from .signing import Signer, SigningKey, load_private_key
from .store import Store

log = logging.getLogger("alipay_sandbox.certs")


@dataclass(frozen=True)
class SigningCert:
    """A certificate the sandbox signs (or signed) with."""

    sn: str
    certificate: x509.Certificate
    chain_pem: bytes  # the leaf, then its issuing CA: what alipaycert.download hands out
    trusted: bool  # chains to an RSA root of the bundle

    def as_dict(self) -> dict[str, Any]:
        return {
            "sn": self.sn,
            "subject": self.certificate.subject.rfc4514_string(),
            "not_after": self.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trusted": self.trusted,
        }


@dataclass(frozen=True)
class CertSetup:
    """The files of a certificate directory, read and checked."""

    directory: Path
    app_cert_sn: str
    app_public_key: rsa.RSAPublicKey
    root_cert_sn: str
    roots: list[x509.Certificate]  # the bundle's RSA-signed certificates
    ca_cert: x509.Certificate
    ca_key: rsa.RSAPrivateKey
    signing_cert: SigningCert  # alipayCertPublicKey_RSA2.crt
    signing_key: rsa.RSAPrivateKey  # --alipay-private-key

    @property
    def setup_id(self) -> str:
        return certs.certificate_sn(self.ca_cert)


def load_setup(directory: Path, signing_key: rsa.RSAPrivateKey) -> CertSetup:
    """Read a certificate directory; ``signing_key`` must be the key of its
    ``alipayCertPublicKey_RSA2.crt``. Raises CertFileError (KeyFileError) naming the file."""
    directory = Path(directory)
    app_path = directory / certs.APP_CERT
    app_cert = certs.read_certificates(app_path, "app certificate")[0]
    bundle_path = directory / certs.ROOT_BUNDLE
    bundle = certs.read_bytes(bundle_path, "root bundle")
    roots = certs.rsa_roots(bundle)
    if not roots:
        raise CertFileError(f"no RSA-signed certificate in the root bundle {bundle_path}")
    ca_cert = certs.read_certificates(directory / certs.CA_CERT, "CA certificate")[0]
    ca_key = load_private_key(directory / certs.CA_KEY)
    if not certs.same_key(ca_cert, ca_key.public_key()):
        raise CertFileError(f"{directory / certs.CA_CERT} does not hold the key of {certs.CA_KEY}")
    signing_path = directory / certs.ALIPAY_CERT
    chain_pem = certs.read_bytes(signing_path, "signing certificate")
    chain = certs.read_certificates(signing_path, "signing certificate")
    if not certs.same_key(chain[0], signing_key.public_key()):
        raise CertFileError(
            f"{signing_path} does not hold the public half of the sandbox's private key"
            " (--alipay-private-key)"
        )
    return CertSetup(
        directory=directory,
        app_cert_sn=certs.certificate_sn(app_cert),
        app_public_key=certs.read_rsa_public_key(app_cert, app_path),
        root_cert_sn="_".join(certs.certificate_sn(root) for root in roots),
        roots=roots,
        ca_cert=ca_cert,
        ca_key=ca_key,
        signing_cert=SigningCert(
            sn=certs.certificate_sn(chain[0]),
            certificate=chain[0],
            chain_pem=chain_pem,
            trusted=certs.chains_to(chain[0], [*chain[1:], ca_cert], roots),
        ),
        signing_key=signing_key,
    )


class RenewError(Exception):
    """A renewal request with a bad body."""


class CertMode:
    def __init__(self, setup: CertSetup, store: Store) -> None:
        self.setup = setup
        self.store = store
        self._lock = threading.Lock()
        self._issued: list[SigningCert] = [setup.signing_cert]
        current = SigningKey(setup.signing_key, setup.signing_cert.sn)
        for row in store.signing_certs(setup.setup_id):
            try:
                renewed, key = self._from_row(row)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                log.warning("renewed signing certificate %s unreadable, skipped", row["sn"])
                continue
            self._issued.append(renewed)
            current = SigningKey(key, renewed.sn)
        self.signer = Signer(current)

    @staticmethod
    def _from_row(row: dict[str, Any]) -> tuple[SigningCert, rsa.RSAPrivateKey]:
        chain_pem = row["chain_pem"].encode("ascii")
        key = serialization.load_pem_private_key(row["key_pem"].encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA key")
        leaf = x509.load_pem_x509_certificate(certs.pem_certificates(chain_pem)[0])
        return SigningCert(row["sn"], leaf, chain_pem, bool(row["trusted"])), key

    @property
    def app_cert_sn(self) -> str:
        return self.setup.app_cert_sn

    @property
    def root_cert_sn(self) -> str:
        return self.setup.root_cert_sn

    def find(self, sn: str) -> SigningCert | None:
        """A certificate the sandbox signs or signed with, by SN."""
        with self._lock:
            return next((issued for issued in self._issued if issued.sn == sn), None)

    def renew(self, payload: dict[str, Any]) -> dict[str, str]:
        """A new key and signing certificate (same subject), used from now on. With
        ``untrusted`` the certificate comes from a throwaway CA that is not in the bundle."""
        untrusted = payload.get("untrusted", False)
        unknown = sorted(set(payload) - {"untrusted"})
        if unknown:
            raise RenewError(f"unknown field(s): {', '.join(unknown)}")
        if not isinstance(untrusted, bool):
            raise RenewError("untrusted must be true or false")
        key = certs.new_key()
        if untrusted:
            issuer_key = certs.new_key()
            issuer = certs.issue_root(issuer_key, certs.UNTRUSTED_CA_NAME)
        else:
            issuer, issuer_key = self.setup.ca_cert, self.setup.ca_key
        subject = self.setup.signing_cert.certificate.subject
        leaf = certs.issue_leaf(subject, key.public_key(), issuer, issuer_key)
        chain_pem = certs.to_pem(leaf) + certs.to_pem(issuer)
        renewed = SigningCert(
            sn=certs.certificate_sn(leaf),
            certificate=leaf,
            chain_pem=chain_pem,
            trusted=certs.chains_to(leaf, [issuer], self.setup.roots),
        )
        with self._lock:
            self.store.insert_signing_cert(
                {
                    "setup": self.setup.setup_id,
                    "sn": renewed.sn,
                    "chain_pem": chain_pem.decode("ascii"),
                    "key_pem": certs.key_pem(key).decode("ascii"),
                    "trusted": int(renewed.trusted),
                    "created_at": time.time(),
                }
            )
            self._issued.append(renewed)
            previous = self.signer.replace(SigningKey(key, renewed.sn))
        log.info("signing certificate renewed: %s (was %s)", renewed.sn, previous.cert_sn)
        return {"alipay_cert_sn": renewed.sn, "previous": previous.cert_sn}

    def describe(self) -> dict[str, Any]:
        with self._lock:
            issued = [cert.as_dict() for cert in self._issued]
        return {
            "mode": "cert",
            "current": self.signer.current().cert_sn,
            "issued": issued,
            "app_cert_sn": self.app_cert_sn,
            "root_cert_sn": self.root_cert_sn,
        }


def describe_key_mode() -> dict[str, Any]:
    """What ``GET /_sandbox/certs`` answers in key mode."""
    return {"mode": "key", "current": None, "issued": [], "app_cert_sn": None, "root_cert_sn": None}
