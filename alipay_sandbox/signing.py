"""Alipay-style RSA signatures (RSA2 = SHA256withRSA, RSA = SHA1withRSA, PKCS#1 v1.5)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGN_TYPES: dict[str, type[hashes.HashAlgorithm]] = {"RSA2": hashes.SHA256, "RSA": hashes.SHA1}
# Request charsets Alipay accepts, and the codec each is read and signed with (GBK is a
# superset of GB2312).
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk"}


class KeyFileError(Exception):
    """A key file is missing or unreadable; the message names the path."""


@dataclass(frozen=True)
class SigningKey:
    """A key the sandbox signs with, and the SN of its certificate in certificate mode."""

    key: rsa.RSAPrivateKey
    cert_sn: str = ""  # "" in key mode: answers name no certificate


class Signer:
    """The key the sandbox signs answers, returns and notifications with now. Fixed in key
    mode; certificate mode replaces it when the signing certificate is renewed."""

    def __init__(self, current: SigningKey) -> None:
        self._current = current

    def current(self) -> SigningKey:
        return self._current

    def replace(self, new: SigningKey) -> SigningKey:
        """Sign with ``new`` from now on (one reference swap, safe across threads); returns
        the key it replaces."""
        previous, self._current = self._current, new
        return previous


def read_file(path: Path, what: str, error: type[KeyFileError] = KeyFileError) -> bytes:
    """The bytes of a key or certificate file; `error` naming `what` and the path if not."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_key_file(path: Path, kind: str) -> bytes:
    return read_file(path, f"{kind} key file")


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"not an unencrypted PEM private key: {path}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"not an RSA private key: {path}")
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"not a PEM public key: {path}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError(f"not an RSA public key: {path}")
    return key


def codec_for(charset: str) -> str | None:
    """The Python codec for a request's ``charset`` (utf-8, gbk, gb2312), else None."""
    return CHARSETS.get(charset.strip().lower())


def string_to_sign(
    params: Mapping[str, str], exclude: Iterable[str] = ("sign",), keep_empty: bool = False
) -> str:
    """Sorted ``k=v`` pairs joined with ``&``, raw values, ``exclude`` left out.

    Empty values are dropped unless ``keep_empty``: Alipay signs every parameter it sends,
    empty ones included, while the official SDKs drop them when they sign requests.
    """
    skip = set(exclude)
    return "&".join(
        f"{key}={value}"
        for key, value in sorted(params.items())
        if key not in skip and value is not None and (keep_empty or value != "")
    )


def _hash_for(sign_type: str) -> hashes.HashAlgorithm:
    try:
        return SIGN_TYPES[sign_type]()
    except KeyError:
        raise ValueError(f"unsupported sign_type {sign_type!r}") from None


def sign(
    key: rsa.RSAPrivateKey, message: str | bytes, sign_type: str = "RSA2", encoding: str = "utf-8"
) -> str:
    """Base64 signature (no line breaks) of ``message`` (encoded with ``encoding`` when a str)."""
    data = message.encode(encoding) if isinstance(message, str) else message
    signature = key.sign(data, padding.PKCS1v15(), _hash_for(sign_type))
    return base64.b64encode(signature).decode("ascii")


def verify(
    key: rsa.RSAPublicKey,
    message: str | bytes,
    signature: str,
    sign_type: str = "RSA2",
    encoding: str = "utf-8",
) -> bool:
    """True when ``signature`` (base64) is a valid signature of ``message``."""
    try:
        data = message.encode(encoding) if isinstance(message, str) else message
        raw = base64.b64decode("".join(signature.split()), validate=True)
        key.verify(raw, data, padding.PKCS1v15(), _hash_for(sign_type))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify_request(
    key: rsa.RSAPublicKey, params: Mapping[str, str], sign_type: str, encoding: str = "utf-8"
) -> bool:
    """Verify a merchant's request: every parameter but ``sign``, ``sign_type`` included.

    python-alipay-sdk signs empty parameters too (``k=``); the official SDKs leave them out.
    Both forms are accepted: the non-empty content is the same either way.
    """
    signature = params.get("sign", "")
    kept = string_to_sign(params, ("sign",), keep_empty=True)
    if verify(key, kept, signature, sign_type, encoding):
        return True
    dropped = string_to_sign(params, ("sign",))
    return dropped != kept and verify(key, dropped, signature, sign_type, encoding)


def sign_params(
    key: rsa.RSAPrivateKey,
    params: Mapping[str, str],
    sign_type: str = "RSA2",
    exclude: Iterable[str] = ("sign", "sign_type"),
    encoding: str = "utf-8",
) -> str:
    """Signature for return / notification parameters, as Alipay makes it.

    Every parameter but ``sign`` and ``sign_type``, empty ones included, in the charset the
    parameters are sent in.
    """
    return sign(key, string_to_sign(params, exclude, keep_empty=True), sign_type, encoding)
