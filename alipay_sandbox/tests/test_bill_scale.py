"""A day of 100,000 trades: generated in bulk, its bill streamed without holding the rows."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from pathlib import Path

import pytest

from alipay_sandbox.testing import start_sandbox
from alipay_sandbox.tests.support import bill_url, cn_day, make_client, session

TRADES = 100_000
REFUNDS = 1_000


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_bill_of_a_day_with_100000_trades_streams(sbx_keys: Path, tmp_path: Path) -> None:
    sandbox = start_sandbox(sbx_keys, tmp_path / "scale.sqlite3")
    try:
        day = cn_day(-2)
        started = time.monotonic()
        made = sandbox.control.generate_trades(day, TRADES, refunds=REFUNDS, amount="12.34")
        generated_s = time.monotonic() - started
        assert made["trades"] == TRADES and made["refunds"] == REFUNDS
        before_mb = peak_rss_mb(sandbox.pid)

        client = make_client(sandbox, sbx_keys, timeout=30)
        started = time.monotonic()
        url = bill_url(client, day)["bill_download_url"]
        response = session().get(url, timeout=120, stream=True)
        assert response.headers["Transfer-Encoding"] == "chunked"
        content = b"".join(response.iter_content(256 * 1024))
        downloaded_s = time.monotonic() - started
        growth_mb = peak_rss_mb(sandbox.pid) - before_mb

        archive = zipfile.ZipFile(io.BytesIO(content), metadata_encoding="gbk")
        detail = next(n for n in archive.namelist() if n.endswith("_业务明细.csv"))
        kinds = {"交易": 0, "退款": 0}
        inside = False
        with archive.open(detail) as raw:
            for line in io.TextIOWrapper(raw, encoding="gbk", newline=""):
                if "业务明细列表结束" in line:
                    break
                if inside and not line.startswith("支付宝交易号"):
                    row = next(csv.reader([line]))
                    kinds[row[2].strip()] += 1
                inside = inside or "业务明细列表" in line
        assert kinds == {"交易": TRADES, "退款": REFUNDS}
        print(
            f"\n{TRADES} trades + {REFUNDS} refunds: generated in {generated_s:.2f} s,"
            f" bill ({len(content) / 1e6:.1f} MB zip) downloaded in {downloaded_s:.2f} s,"
            f" sandbox peak memory +{growth_mb:.1f} MiB"
        )
        # The rows of the day (tens of MB as Python objects) never sit in memory at once.
        assert growth_mb < 25
    finally:
        sandbox.stop()
