"""Separate sandbox instances: restart survival, giving up, the CLI, the key helpers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from alipay import AliPay

from alipay_sandbox.config import parse_config
from alipay_sandbox.keys import generate_key_pair, write_dev_keys
from alipay_sandbox.testing import start_sandbox
from tests.sandbox.support import NotifyReceiver, make_client, wait_for


def test_pending_notification_survives_restart(sbx_keys: Path, tmp_path: Path) -> None:
    receiver = NotifyReceiver(script=["fail"])
    store = tmp_path / "restart.sqlite3"
    first = start_sandbox(sbx_keys, store, time_factor=0.005)  # first retry after 1.2 s
    try:
        client = make_client(first, sbx_keys)
        query = client.api_alipay_trade_page_pay("R", "restart-1", "9.00", notify_url=receiver.url)
        first.control.pay(first.gateway + "?" + query)
        wait_for(lambda: len(first.control.notifications()[0]["attempts"]) == 1)
    finally:
        first.stop()
    assert len(receiver.forms()) == 1
    second = start_sandbox(sbx_keys, store, time_factor=0.005)
    try:
        notes = second.control.wait_notifications(timeout=10)
        assert notes[0]["state"] == "delivered"
        assert [a["body"] for a in notes[0]["attempts"]] == ["fail", "success"]
        forms = receiver.forms()
        assert len(forms) == 2 and forms[0]["notify_id"] == forms[1]["notify_id"]
        client = make_client(second, sbx_keys)
        assert client.api_alipay_trade_query(out_trade_no="restart-1")["trade_status"] == (
            "TRADE_SUCCESS"
        )
    finally:
        second.stop()
        receiver.close()


def test_gives_up_after_eight_deliveries(sbx_keys: Path, tmp_path: Path) -> None:
    receiver = NotifyReceiver(default="fail")
    sandbox = start_sandbox(sbx_keys, tmp_path / "giveup.sqlite3", time_factor=0.00001)
    try:
        client: AliPay = make_client(sandbox, sbx_keys)
        query = client.api_alipay_trade_page_pay("G", "giveup-1", "9.00", notify_url=receiver.url)
        sandbox.control.pay(sandbox.gateway + "?" + query)
        (note,) = sandbox.control.wait_notifications(timeout=10)
        assert note["state"] == "given_up"
        assert len(note["attempts"]) == 8 and note["deliveries"] == 8
        assert len(receiver.forms()) == 8
    finally:
        sandbox.stop()
        receiver.close()


def test_missing_key_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "alipay_private_key.pem"
    result = subprocess.run(
        [sys.executable, "-m", "alipay_sandbox", "--alipay-private-key", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0]
    assert "Traceback" not in result.stderr


def test_config_flags_win_over_env() -> None:
    env = {
        "ALIPAY_SANDBOX_PORT": "9100",
        "ALIPAY_SANDBOX_APP_IDS": "1, 2",
        "ALIPAY_SANDBOX_TIME_FACTOR": "0.5",
        "ALIPAY_SANDBOX_CONTROL": "1",
        "ALIPAY_SANDBOX_STORE": "/tmp/x.sqlite3",
    }
    config = parse_config([], env)
    assert config.port == 9100 and config.app_ids == ["1", "2"]
    assert config.time_factor == 0.5 and config.control is True
    assert config.base_url() == "http://127.0.0.1:9100"
    flagged = parse_config(["--port", "9200", "--no-control", "--public-url", "http://x/"], env)
    assert flagged.port == 9200 and flagged.control is False
    assert flagged.base_url() == "http://x"
    default = parse_config([], {})
    assert default.port == 8090 and default.control is False
    assert default.app_ids == ["2021000000000001"]


def test_generate_key_pair_loads_in_sdk() -> None:
    private_pem, public_pem = generate_key_pair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    AliPay(
        "1",
        app_private_key_string=private_pem.decode(),
        alipay_public_key_string=public_pem.decode(),
    )


def test_write_dev_keys_never_overwrites(tmp_path: Path) -> None:
    written = write_dev_keys(tmp_path)
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
    assert write_dev_keys(tmp_path) == []
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    (tmp_path / "app_public_key.pem").unlink()
    assert write_dev_keys(tmp_path) == [tmp_path / "app_public_key.pem"]
    assert (tmp_path / "app_public_key.pem").read_bytes() == before["app_public_key.pem"]
