"""Alipay-style RSA signatures (RSA2 = SHA256withRSA, RSA = SHA1withRSA, PKCS#1 v1.5)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGN_TYPES: dict[str, type[hashes.HashAlgorithm]] = {"RSA2": hashes.SHA256, "RSA": hashes.SHA1}


class KeyFileError(Exception):
    """A key file is missing or unreadable; the message names the path."""


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{kind} key file not found: {path}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {kind} key file {path}: {exc.strerror}") from None


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


def string_to_sign(params: Mapping[str, str], exclude: Iterable[str] = ("sign",)) -> str:
    """Sorted ``k=v`` pairs joined with ``&``: raw values, empty values and ``exclude`` dropped."""
    skip = set(exclude)
    return "&".join(
        f"{key}={value}"
        for key, value in sorted(params.items())
        if key not in skip and value is not None and value != ""
    )


def _hash_for(sign_type: str) -> hashes.HashAlgorithm:
    try:
        return SIGN_TYPES[sign_type]()
    except KeyError:
        raise ValueError(f"unsupported sign_type {sign_type!r}") from None


def sign(key: rsa.RSAPrivateKey, message: str | bytes, sign_type: str = "RSA2") -> str:
    """Base64 signature (no line breaks) of ``message`` (UTF-8 when a str)."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    signature = key.sign(data, padding.PKCS1v15(), _hash_for(sign_type))
    return base64.b64encode(signature).decode("ascii")


def verify(
    key: rsa.RSAPublicKey, message: str | bytes, signature: str, sign_type: str = "RSA2"
) -> bool:
    """True when ``signature`` (base64) is a valid signature of ``message``."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
        key.verify(raw, data, padding.PKCS1v15(), _hash_for(sign_type))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def sign_params(
    key: rsa.RSAPrivateKey,
    params: Mapping[str, str],
    sign_type: str = "RSA2",
    exclude: Iterable[str] = ("sign", "sign_type"),
) -> str:
    """Signature for return / notification parameters (``sign`` and ``sign_type`` left out)."""
    return sign(key, string_to_sign(params, exclude), sign_type)
