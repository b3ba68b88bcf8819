"""Fuzz of the bill parser (Hypothesis): zip layouts, encodings, line lengths, amount texts.

Whatever the file, reconciling it ends in a report, done or failed with its reason; nothing
raises, and memory stays within a bound set by the caps. Each example takes the real path: the
sandbox's signed answer names the file a local host serves.
"""
import io
import itertools
import tracemalloc
import zipfile
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from alipay_sandbox.client import SandboxControl
from payment.models import BillEntry, BillReport
from payment.reconciliation import bills
from tests.payment.reconciliation.crafted_bills import (
    DETAIL_NAME,
    BillHost,
    bill_row,
    bill_text,
    encrypted,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("alipay_settings")]

MAX_LINE = 1024
DAY = date(2026, 1, 1)
_paths = itertools.count()

AMOUNTS = st.one_of(
    st.sampled_from(["9.90", "-9.90", "0.01", "0", "NaN", "-NaN", "sNaN", "Infinity",
                     "-Infinity", "1e999999", "-1E-999999", "12345678901.00", "9999999999.99",
                     "0.001", "１２.００", "1,000.00", " 1.00 ", "+1.00", "", "-", "."]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=24),
)
CELLS = st.one_of(st.text(max_size=40), st.from_regex(r"[0-9]{20,80}", fullmatch=True))


@st.composite
def rows(draw: Any) -> list[str] | str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))  # a line of anything, CSV quoting included
    subject = draw(st.one_of(st.text(max_size=30),
                             st.integers(0, 3 * MAX_LINE).map(lambda n: "x" * n)))
    return bill_row(draw(CELLS), draw(CELLS), draw(AMOUNTS),
                    kind=draw(st.sampled_from(["交易", "退款", "其他", ""])),
                    out_request_no=draw(CELLS), subject=subject)


@st.composite
def bill_files(draw: Any) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return bytes(draw(st.one_of(st.binary(max_size=2000),
                                    st.binary(max_size=2000).map(b"PK\x03\x04".__add__))))
    text = bill_text(draw(st.lists(rows(), max_size=6)))
    encoding = draw(st.sampled_from(["gbk", "gb18030", "utf-8", "utf-16", "big5", "latin-1"]))
    data = text.encode(encoding, "replace")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    layout = draw(st.sampled_from(["alipay", "no-csv", "several", "nested", "encrypted",
                                   "stored", "bzip2", "lzma", "corrupted"]))
    compression = {"stored": zipfile.ZIP_STORED, "bzip2": zipfile.ZIP_BZIP2,
                   "lzma": zipfile.ZIP_LZMA}.get(layout, zipfile.ZIP_DEFLATED)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        if layout != "no-csv":
            archive.writestr(f"a/{DETAIL_NAME}" if layout == "nested" else DETAIL_NAME, data)
        if layout == "several":
            archive.writestr(f"2_{DETAIL_NAME}", data)
        archive.writestr("summary_汇总.csv", b"#")
    zipped = buffer.getvalue()
    if layout == "encrypted":
        zipped = encrypted(zipped)
    if layout == "corrupted":
        damaged = bytearray(zipped)
        for _ in range(draw(st.integers(1, 4))):
            damaged[draw(st.integers(0, len(damaged) - 1))] = draw(st.integers(0, 255))
        zipped = bytes(damaged)
    return zipped


@pytest.fixture
def small_caps(settings: Any) -> None:
    settings.BILL_MAX_LINE_CHARS = MAX_LINE
    settings.BILL_MAX_UNCOMPRESSED_BYTES = 256 * 1024


@pytest.mark.usefixtures("small_caps")
@fuzz_settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
@given(data=bill_files())
def test_bill_parser_fuzz_ends_in_a_report_in_bounded_memory(
    data: bytes, sandbox: SandboxControl, bill_host: BillHost,
) -> None:
    sandbox.set_faults(bill_url=bill_host.serve(f"/fuzz-{next(_paths)}.zip", data))

    tracemalloc.start()
    try:
        report = bills.bill_reconcile(day=DAY).report
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    report = BillReport.objects.get(pk=report.pk)
    event(f"{report.state}: {report.error.split(' (')[0][:40]}")  # --hypothesis-show-statistics
    assert report.state in (BillReport.State.DONE, BillReport.State.FAILED)
    if report.state == BillReport.State.FAILED:
        assert report.error
    else:
        lines = BillEntry.objects.filter(report=report).count()
        assert lines == report.alipay_trades + report.alipay_refunds
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1024 / 1024:.1f} MiB"
