"""The bill download and its file are bounded: crafted bills from a test gateway.

The sandbox's signed answer to `alipay.data.dataservice.bill.downloadurl.query` names the URL a
test serves (its `bill_url` fault), so every case runs the real path: signed query, download,
parsing, the report and its rows in PostgreSQL.
"""
import time
import tracemalloc
import zipfile
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment import gateway
from payment.models import BillEntry, BillFinding, BillReport
from payment.reconciliation import bills
from tests.factories import PaymentFactory
from tests.payment.reconciliation.crafted_bills import (
    DETAIL_NAME,
    BillHost,
    TlsDrip,
    announced,
    bill_row,
    bill_text,
    bill_zip,
    drip,
    encrypted,
    endless,
    long_line_zip,
    redirect,
)
from tests.support import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("alipay_settings")]

Outcome = BillFinding.Outcome
MiB = 1024 * 1024
TOTALS = ("alipay_trades", "alipay_trade_amount", "alipay_refunds", "alipay_refund_amount",
          "our_trades", "our_trade_amount", "matched", "findings", "runs")


@pytest.fixture
def day() -> date:
    return timezone.now().astimezone(gateway.BEIJING).date()


def _reconcile(sandbox: SandboxControl, url: str, day: date) -> BillReport:
    sandbox.set_faults(bill_url=url)
    return bills.bill_reconcile(day=day).report


def _books(day: date) -> tuple[dict[str, Any], list[tuple[str, str]], int]:
    report = BillReport.objects.get(bill_date=day)
    return ({name: getattr(report, name) for name in TOTALS},
            sorted(report.finding_rows.values_list("outcome", "trade_no")),
            BillEntry.objects.filter(report=report).count())


@pytest.fixture
def good_run(sandbox: SandboxControl, bill_host: BillHost, day: date) -> tuple[Any, ...]:
    """A good bill of the day reconciled first: one trade matched, one amount mismatch, one
    refund unknown here."""
    matched = PaymentFactory.create(order__total_amount=Decimal("9.90"))
    differing = PaymentFactory.create(order__total_amount=Decimal("9.90"))
    good = bill_zip(bill_text([
        bill_row(matched.trade_id, matched.order_id, "9.90"),
        bill_row(differing.trade_id, differing.order_id, "8.80"),
        bill_row(matched.trade_id, matched.order_id, "-1.00", kind="退款",
                 out_request_no="unknown-R01"),
    ]))
    report = _reconcile(sandbox, bill_host.serve("/good.zip", good), day)
    assert report.state == BillReport.State.DONE
    assert (report.alipay_trades, report.matched, report.findings) == (2, 1, 2)
    assert {f.outcome for f in report.finding_rows.all()} == {
        Outcome.AMOUNT_MISMATCH, Outcome.REFUND_MISMATCH}
    return _books(day)


def _failed(report: BillReport, reason: str) -> None:
    report.refresh_from_db()
    assert report.state == BillReport.State.FAILED, report.error
    assert reason in report.error, report.error


def _row_with(amount: str = "9.90", subject: str = "Book") -> str:
    return ",".join(bill_row("2026010122001400000000000001", "crafted-1", amount,
                             subject=subject))


MALFORMED = {
    "nan": (bill_text([_row_with("NaN")]).encode("gbk"), "unreadable amount 'NaN'"),
    "minus-infinity": (bill_text([_row_with("-Infinity")]).encode("gbk"),
                       "unreadable amount '-Infinity'"),
    "huge-exponent": (bill_text([_row_with("1e999999")]).encode("gbk"),
                      "unreadable amount '1e999999'"),
    "over-long-field": (bill_text([_row_with(subject="x" * 200_000)]).encode("gbk"),
                        "longer than BILL_MAX_LINE_CHARS"),
    "not-gbk": (bill_text([_row_with(subject="MARK")]).encode("gbk").replace(
        b"MARK", b"\xff\xfe"), "not GBK text"),
    "nul-byte": (bill_text([bill_row("2026010122001400000000000001", "crafted\0-1", "9.90")])
                 .encode("gbk"), "NUL"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_bill_is_a_failed_report_and_keeps_the_days_findings(
    case: str, sandbox: SandboxControl, bill_host: BillHost, day: date,
    good_run: tuple[Any, ...],
) -> None:
    detail, reason = MALFORMED[case]

    report = _reconcile(sandbox, bill_host.serve(f"/{case}.zip", bill_zip(detail)), day)

    _failed(report, reason)
    assert _books(day) == good_run  # totals, findings and lines of the good run stay


LAYOUTS = {
    "no-csv": (bill_zip(None, extra={"readme.txt": b"no bill"}), "found 0"),
    "several": (bill_zip(bill_text([]), extra={"other_业务明细.csv": b"x"}), "found 2"),
    "nested-dirs": (bill_zip(bill_text([]), name=f"a/b/{DETAIL_NAME}"), "folder"),
    "encrypted": (encrypted(bill_zip(bill_text([]))), "encrypted"),
    "not-a-zip": (b"<html><body>Service unavailable</body></html>", "not a zip"),
    "bzip2": (bill_zip(bill_text([]), compression=zipfile.ZIP_BZIP2), "compression"),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_bill_zip_layout_not_alipays_is_a_failed_report(
    case: str, sandbox: SandboxControl, bill_host: BillHost, day: date,
    good_run: tuple[Any, ...],
) -> None:
    data, reason = LAYOUTS[case]

    report = _reconcile(sandbox, bill_host.serve(f"/{case}.zip", data), day)

    _failed(report, reason)
    assert _books(day) == good_run


def test_bill_with_one_long_line_fails_in_bounded_memory(
    sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    crafted = long_line_zip(64 * MiB)
    assert len(crafted) < 100_000  # a 64 MiB line in a small zip
    url = bill_host.serve("/long-line.zip", crafted)

    tracemalloc.start()
    try:
        report = _reconcile(sandbox, url, day)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    _failed(report, "longer than BILL_MAX_LINE_CHARS")
    assert peak < 16 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_bill_over_the_uncompressed_cap_fails_before_it_is_read(
    settings: Any, sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    settings.BILL_MAX_UNCOMPRESSED_BYTES = MiB
    rows = [bill_row(f"2026010122001400{n:012d}", f"big-{n}", "9.90", subject="y" * 600)
            for n in range(2000)]
    url = bill_host.serve("/big.zip", bill_zip(bill_text(rows)))

    report = _reconcile(sandbox, url, day)

    _failed(report, "BILL_MAX_UNCOMPRESSED_BYTES")
    assert not BillEntry.objects.filter(report=report).exists()


@pytest.mark.parametrize("case", ["endless", "announced"])
def test_bill_download_stops_at_the_byte_cap(
    case: str, settings: Any, sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    settings.BILL_DOWNLOAD_MAX_BYTES = MiB
    body = endless(48 * MiB) if case == "endless" else announced(10 * 1024 * MiB)
    url = bill_host.serve(f"/{case}", body)

    report = _reconcile(sandbox, url, day)

    _failed(report, "BILL_DOWNLOAD_MAX_BYTES")
    if case == "endless":
        # What the socket buffers took besides: far from the 48 MiB on offer.
        sent = wait_for(lambda: bill_host.sent("/endless"), 10)
        assert sent < 24 * MiB


@pytest.mark.parametrize("where", ["body", "headers", "tls-handshake"])
def test_bill_download_is_cut_at_the_deadline(
    where: str, settings: Any, sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    settings.BILL_DOWNLOAD_SECONDS = 1.0  # each byte comes well within the read time-out
    if where == "tls-handshake":
        settings.PRODUCTION = True
        settings.BILL_DOWNLOAD_HOSTS = ["127.0.0.1"]
        tls = TlsDrip(interval=0.2, seconds=8)
        url = f"https://127.0.0.1:{tls.port}/bill.zip"
    else:
        url = bill_host.serve(f"/drip-{where}", drip(interval=0.2, seconds=8,
                                                     in_headers=where == "headers"))

    started = time.monotonic()
    report = _reconcile(sandbox, url, day)
    elapsed = time.monotonic() - started
    if where == "tls-handshake":
        tls.close()

    _failed(report, "BILL_DOWNLOAD_SECONDS")
    assert elapsed < 2.5


@pytest.mark.parametrize("mode", ["development-other-host", "production-metrics"])
def test_bill_url_off_the_allow_list_is_never_fetched(
    mode: str, settings: Any, sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    good = bill_zip(bill_text([]))
    if mode == "production-metrics":
        settings.PRODUCTION = True
        settings.BILL_DOWNLOAD_HOSTS = ["dwbillcenter.alipay.com"]
        url = bill_host.serve("/metrics", good)
    else:  # the sandbox's host is 127.0.0.1; localhost is another name
        url = bill_host.serve("/bill.zip", good, host="localhost")

    report = _reconcile(sandbox, url, day)

    _failed(report, "BILL_DOWNLOAD_HOSTS")
    assert bill_host.requests == []


def test_bill_url_redirect_is_not_followed(
    sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    elsewhere = bill_host.serve("/metrics", bill_zip(bill_text([])), host="localhost")
    url = bill_host.serve("/bill.zip", redirect(elsewhere))

    report = _reconcile(sandbox, url, day)

    _failed(report, "redirects are not followed")
    assert bill_host.requests == ["/bill.zip"]


def test_bill_url_in_production_is_fetched_over_https_only(
    settings: Any, sandbox: SandboxControl, bill_host: BillHost, day: date,
) -> None:
    settings.PRODUCTION = True
    settings.BILL_DOWNLOAD_HOSTS = ["127.0.0.1"]
    url = bill_host.serve("/bill.zip", bill_zip(bill_text([])))

    # Fetched as https://: the plain HTTP host cannot answer a TLS handshake.
    with pytest.raises(gateway.GatewayUnavailable):
        _reconcile(sandbox, url, day)

    assert bill_host.requests == []
