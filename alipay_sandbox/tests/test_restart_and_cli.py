"""Separate sandbox instances: restart survival, giving up, the CLI, the key helpers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alipay import AliPay

from alipay_sandbox.config import parse_config
from alipay_sandbox.testing import start_sandbox
from alipay_sandbox.tests.support import (
    APP_ID,
    NotifyReceiver,
    download,
    make_client,
    read_bill,
    wait_for,
)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert (default.refund_window_days, default.bill_url_ttl_s, default.empty_param_rate) == (
        365.0,
        30.0,
        0.0,
    )
    behaviour = {
        "ALIPAY_SANDBOX_REFUND_WINDOW_DAYS": "90",
        "ALIPAY_SANDBOX_BILL_URL_TTL": "10",
        "ALIPAY_SANDBOX_EMPTY_PARAM_RATE": "0.1",
    }
    configured = parse_config(["--empty-param-rate", "0.2"], behaviour)
    assert configured.refund_window_days == 90 and configured.bill_url_ttl_s == 10
    assert configured.empty_param_rate == 0.2


def test_bad_behaviour_flags_stop_start_up() -> None:
    assert parse_config(["--empty-param-rate", "1"], {}).empty_param_rate == 1.0
    for argv in (
        ["--empty-param-rate", "2"],
        ["--refund-window-days", "0"],
        ["--bill-url-ttl", "-1"],
    ):
        with pytest.raises(SystemExit):
            parse_config(argv, {})


@pytest.mark.slow
def test_behaviour_flags_reach_the_settings(sbx_keys: Path, tmp_path: Path) -> None:
    sandbox = start_sandbox(
        sbx_keys,
        tmp_path / "flags.sqlite3",
        "--refund-window-days",
        "2",
        "--bill-url-ttl",
        "5000",
        "--empty-param-rate",
        "0.5",
        time_factor=0.01,
    )
    try:
        settings = sandbox.control.settings()
        assert settings["refund_window_s"] == pytest.approx(2 * 86400 * 0.01)
        assert settings["bill_url_ttl_s"] == pytest.approx(50)
        assert settings["empty_param_rate"] == 0.5
    finally:
        sandbox.stop()


@pytest.mark.slow
def test_synthetic_trades_from_the_command_line(sbx_keys: Path, tmp_path: Path) -> None:
    store = tmp_path / "cli.sqlite3"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alipay_sandbox.synthetic",
            "--store",
            str(store),
            "--date",
            "2024-05-01",
            "--count",
            "50",
            "--refunds",
            "5",
            "--prefix",
            "cli-",
            "--amount",
            "1.00",
            "--amount",
            "3.00",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr
    assert "50 trades and 5 refunds on 2024-05-01" in result.stdout
    sandbox = start_sandbox(sbx_keys, store)
    try:
        bill = read_bill(download(make_client(sandbox, sbx_keys), "2024-05-01"))
        assert len(bill.records) == 55
        assert bill.footer[0] == "#交易合计：50笔，商家实收共100.00元，商家优惠共0.00元"
    finally:
        sandbox.stop()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "alipay_sandbox.synthetic",
            "--store",
            str(store),
            "--date",
            "2024-05-32",
            "--count",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert bad.returncode == 2 and "date must be yyyy-MM-dd" in bad.stderr


@pytest.mark.slow
def test_store_written_by_an_older_sandbox_is_upgraded(sbx_keys: Path, tmp_path: Path) -> None:
    store = tmp_path / "old.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.executescript(OLD_TRADES)
        conn.execute(
            "INSERT INTO trades (out_trade_no, app_id, method, subject, total_amount, status,"
            " trade_no, gmt_create, gmt_payment) VALUES ('old-1', ?, 'alipay.trade.page.pay',"
            " 'Old', '5.00', 'TRADE_SUCCESS', '202401012200100000000000000001',"
            " '2024-01-01 10:00:00', '2024-01-01 10:00:05')",
            (APP_ID,),
        )
    sandbox = start_sandbox(sbx_keys, store)
    try:
        client = make_client(sandbox, sbx_keys)
        assert client.api_alipay_trade_query(out_trade_no="old-1")["trade_status"] == (
            "TRADE_SUCCESS"
        )
        refund = client.api_alipay_trade_refund("1.00", out_trade_no="old-1", out_request_no="o")
        assert refund["fund_change"] == "Y"
        assert len(read_bill(download(client, "2024-01-01")).records) == 1
    finally:
        sandbox.stop()


# The trades table as the first release of the sandbox created it.
OLD_TRADES = """
CREATE TABLE trades (
    out_trade_no TEXT PRIMARY KEY, app_id TEXT NOT NULL, method TEXT NOT NULL,
    subject TEXT NOT NULL, total_amount TEXT NOT NULL, status TEXT NOT NULL,
    trade_no TEXT UNIQUE, return_url TEXT NOT NULL DEFAULT '',
    notify_url TEXT NOT NULL DEFAULT '', sign_type TEXT NOT NULL DEFAULT 'RSA2',
    buyer_id TEXT NOT NULL DEFAULT '', buyer_logon_id TEXT NOT NULL DEFAULT '',
    refund_fee TEXT NOT NULL DEFAULT '0.00', gmt_create TEXT NOT NULL,
    gmt_payment TEXT NOT NULL DEFAULT '', gmt_close TEXT NOT NULL DEFAULT '',
    gmt_refund TEXT NOT NULL DEFAULT '', return_params TEXT NOT NULL DEFAULT ''
);
"""
