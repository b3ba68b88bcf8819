"""Key pairs: the shop's own, and the pair the local sandbox signs with."""
import stat
from pathlib import Path

from alipay import AliPay
from django.core.management import call_command

from payment.gateway.keys import generate_key_pair, write_keys


def test_generate_key_pair_loads_in_sdk() -> None:
    private_pem, public_pem = generate_key_pair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    AliPay(
        "1",
        app_private_key_string=private_pem.decode(),
        alipay_public_key_string=public_pem.decode(),
    )


def test_write_keys_never_overwrites(tmp_path: Path) -> None:
    written = write_keys(tmp_path, sandbox=True)
    names = sorted(path.name for path in written)
    assert names == [
        "alipay_private_key.pem",
        "alipay_public_key.pem",
        "app_private_key.pem",
        "app_public_key.pem",
    ]
    for name in ("alipay_private_key.pem", "app_private_key.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert write_keys(tmp_path, sandbox=True) == []
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    (tmp_path / "app_public_key.pem").unlink()
    assert write_keys(tmp_path, sandbox=True) == [tmp_path / "app_public_key.pem"]
    assert (tmp_path / "app_public_key.pem").read_bytes() == before["app_public_key.pem"]


def test_alipay_keys_command_with_the_sandbox_pair_keeps_existing_keys(tmp_path: Path) -> None:
    call_command("alipay_keys", "--sandbox", "--dir", str(tmp_path))
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}
    call_command("alipay_keys", "--sandbox", "--dir", str(tmp_path))
    second = {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")}

    assert sorted(first) == ["alipay_private_key.pem", "alipay_public_key.pem",
                             "app_private_key.pem", "app_public_key.pem"]
    assert first == second
    assert (tmp_path / "app_private_key.pem").stat().st_mode & 0o077 == 0


def test_alipay_keys_command_writes_only_the_shops_pair_by_default(tmp_path: Path) -> None:
    call_command("alipay_keys", "--dir", str(tmp_path))

    assert sorted(p.name for p in tmp_path.glob("*.pem")) == ["app_private_key.pem",
                                                             "app_public_key.pem"]
