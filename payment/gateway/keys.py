"""RSA-2048 key pairs: the shop's own (production too) and, for local work, the pair the
Alipay sandbox signs with."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

APP_PAIR = ("app_private_key.pem", "app_public_key.pem")
# Plays Alipay's own key in the local sandbox; real Alipay never gives its private key out.
SANDBOX_PAIR = ("alipay_private_key.pem", "alipay_public_key.pem")


def generate_key_pair() -> tuple[bytes, bytes]:
    """Return ``(private_pem, public_pem)`` for a new RSA-2048 key.

    The private key is PKCS#8 PEM, the public key SubjectPublicKeyInfo PEM, both with
    header lines (the forms python-alipay-sdk accepts).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return private_pem, public_pem


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def write_keys(directory: Path, *, sandbox: bool = False) -> list[Path]:
    """Write the app's key pair into ``directory``, and the sandbox's when ``sandbox``.

    Files: ``app_private_key.pem``, ``app_public_key.pem`` and, for the sandbox,
    ``alipay_private_key.pem``, ``alipay_public_key.pem``. A pair whose private key file
    already exists is kept as it is (never overwritten); if only its public file is missing,
    it is derived from the existing private key. Private key files get mode 0600. Returns
    the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for private_name, public_name in (APP_PAIR, SANDBOX_PAIR) if sandbox else (APP_PAIR,):
        private_path = directory / private_name
        public_path = directory / public_name
        if private_path.exists():
            if public_path.exists():
                continue
            key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
            public_pem = key.public_key().public_bytes(
                encoding=serialization.Encoding.PEM,
                format=serialization.PublicFormat.SubjectPublicKeyInfo,
            )
            _write_new(public_path, public_pem, 0o644)
            written.append(public_path)
            continue
        if public_path.exists():
            # A public key without its private half cannot be kept consistent: leave both.
            continue
        private_pem, public_pem = generate_key_pair()
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public_pem, 0o644)
        written.extend([private_path, public_path])
    return written
