"""Daily reconciliation against Alipay's trade bill: our books and Alipay's, line by line.

The bill of a day (`alipay.data.dataservice.bill.downloadurl.query`, bill_type=trade, T+1) is a
zip of GBK-encoded CSV: `#` header lines, the detail block between the 业务明细列表 markers
(one line per trade and per refund), totals after. It is streamed to a temporary file and its
detail lines into BillEntry rows in batches, so a day of 100,000 trades never sits in memory;
the comparison with our payments and refunds is then a few set-based queries.

The file is not signed (the answer naming its URL is), so it is read as untrusted input: the
download is bounded (payment.gateway.bill_download), the zip must look like Alipay's (one
detail CSV beside the summary, no folders, not encrypted, deflated, at most
BILL_MAX_UNCOMPRESSED_BYTES unpacked), lines are read at most BILL_MAX_LINE_CHARS at a time,
and every value must be one Alipay writes. Anything else makes the day's report FAILED with the
reason, and the day keeps the lines, findings and totals of its last good run.

Outcomes per line: matched; paid at Alipay but unknown or unpaid here (confirmed with a trade
query, then applied through the normal idempotent path with source "bill"); paid here but
absent from the bill; amount mismatch; refund mismatch. A rerun of a day replaces its report
and applies nothing twice.
"""
import csv
import io
import logging
import re
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from time import perf_counter
from typing import IO

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from payment import gateway, metrics
from payment.models import BillEntry, BillFinding, BillReport, Payment, PaymentEvent, Refund
from payment.reconciliation.found import trades_found_apply

logger = logging.getLogger(__name__)

Kind = BillEntry.Kind
Outcome = BillFinding.Outcome
ENTRY_BATCH = 5000
APPLY_BATCH = 200
DETAIL_MARK = "业务明细列表"
COLUMNS = {
    "支付宝交易号": "trade_no",
    "商户订单号": "out_trade_no",
    "业务类型": "kind",
    "完成时间": "finished_at",
    "订单金额（元）": "amount",
    "退款批次号/请求号": "out_request_no",
}
KINDS = {"交易": Kind.TRADE, "退款": Kind.REFUND}
# Yuan with at most two decimals, as Alipay writes them; fits BillEntry.amount (12, 2).
AMOUNT_TEXT = re.compile(r"-?[0-9]{1,10}(\.[0-9]{1,2})?")
ID_FIELDS = ("trade_no", "out_trade_no", "out_request_no")
ID_MAX_CHARS = 64  # Alipay's trade_no, out_trade_no and out_request_no
# Alipay's zip holds two files. zipfile keeps every entry its central directory lists in
# memory (64 MiB of them: 450 MB), so the directory is measured before zipfile reads it.
ZIP_MAX_ENTRIES = 16
ZIP_MAX_DIRECTORY_BYTES = 64 * 1024
ZIP_END = struct.Struct("<4s4H2LH")  # the end of central directory record
ZIP_END_SIGNATURE = b"PK\x05\x06"
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile and zlib raise on a damaged archive (CRC, headers, streams, flags).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
              NotImplementedError, RuntimeError)


class BillUnreadable(Exception):
    """The downloaded file is not a trade bill we can read, or breaks one of its limits."""


@dataclass(frozen=True)
class BillRow:
    kind: str
    trade_no: str
    out_trade_no: str
    out_request_no: str
    amount: Decimal
    finished_at: str


class _DetailLines:
    """The detail block's lines, its column header first, read at most BILL_MAX_LINE_CHARS at
    a time: a longer line, a CSV record (quoted line breaks) running past it, or a NUL makes
    the bill unreadable, and memory never follows a line's length."""

    def __init__(self, text: IO[str], max_chars: int) -> None:
        self._text = text
        self.max_chars = max_chars
        self.number = 0  # lines read
        self.record = 0  # characters of the CSV record being read; _rows resets it

    def __iter__(self) -> Iterator[str]:
        inside = False
        while line := self._text.readline(self.max_chars + 2):
            self.number += 1
            if len(line) > self.max_chars and len(line.rstrip("\r\n")) > self.max_chars:
                raise BillUnreadable(f"line {self.number} is longer than BILL_MAX_LINE_CHARS "
                                     f"({self.max_chars} characters)")
            if "\0" in line:
                raise BillUnreadable(f"line {self.number} holds a NUL character")
            if line.startswith("#"):
                if DETAIL_MARK in line:
                    if "结束" in line:
                        return
                    inside = True
                continue
            if inside and line.strip():
                self.record += len(line)
                if self.record > self.max_chars:
                    raise BillUnreadable(
                        f"the CSV record at line {self.number} is longer than "
                        f"BILL_MAX_LINE_CHARS ({self.max_chars} characters)")
                yield line


def _zip_directory_check(stream: IO[bytes]) -> None:
    """Refuse a zip whose central directory is larger than a bill's, before zipfile reads it;
    found as zipfile finds it (the record at the very end, else the last in the comment)."""
    size = stream.seek(0, io.SEEK_END)
    tail_start = max(size - (1 << 16) - ZIP_END.size, 0)
    stream.seek(tail_start)
    tail = stream.read()
    stream.seek(0)
    at = len(tail) - ZIP_END.size
    if at < 0 or tail[at:at + 4] != ZIP_END_SIGNATURE or tail[-2:] != b"\0\0":
        at = tail.rfind(ZIP_END_SIGNATURE)
        if at < 0 or len(tail) - at < ZIP_END.size:
            raise BillUnreadable("the bill is not a zip file")
    *_, entries, directory_bytes, _, _ = ZIP_END.unpack_from(tail, at)
    locator_at = tail_start + at - 20
    if locator_at >= 0:
        stream.seek(locator_at)
        zip64 = stream.read(4) == ZIP64_LOCATOR_SIGNATURE
        stream.seek(0)
        if zip64:
            raise BillUnreadable("the bill is a zip64 archive; Alipay's are not")
    if entries > ZIP_MAX_ENTRIES or directory_bytes > ZIP_MAX_DIRECTORY_BYTES:
        raise BillUnreadable(f"the bill's zip lists {entries} entries in {directory_bytes} "
                             f"bytes; Alipay's holds two files")


def _detail_entry(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The detail CSV, when the zip is laid out as Alipay's and within the limits."""
    entries = archive.infolist()
    if len(entries) > ZIP_MAX_ENTRIES:
        raise BillUnreadable(f"the bill's zip holds {len(entries)} entries; Alipay's two")
    folders = [e.filename for e in entries if "/" in e.filename or "\\" in e.filename]
    if folders:
        raise BillUnreadable(f"the bill's zip has folders ({folders[0][:80]!r}); Alipay's "
                             "has its files at the top")
    # The detail file; Alipay adds a 汇总 (summary) file beside it.
    details = [e for e in entries if e.filename.endswith(".csv") and "汇总" not in e.filename]
    if len(details) != 1:
        raise BillUnreadable(f"expected one detail CSV in the bill, found {len(details)}")
    detail = details[0]
    if detail.flag_bits & 0x1:
        raise BillUnreadable("the bill's detail file is encrypted")
    if detail.compress_type not in ZIP_METHODS:
        raise BillUnreadable(f"the bill's detail file uses compression method "
                             f"{detail.compress_type}; Alipay's are deflated")
    limit = settings.BILL_MAX_UNCOMPRESSED_BYTES
    if detail.file_size > limit:
        # zipfile never unpacks more than this size (a lie fails the CRC): checked up front.
        raise BillUnreadable(f"the bill's detail file is {detail.file_size} bytes unpacked, "
                             f"above BILL_MAX_UNCOMPRESSED_BYTES ({limit})")
    return detail


def bill_rows(stream: IO[bytes]) -> Iterator[BillRow]:
    """The detail lines of a trade bill zip, one at a time; BillUnreadable when the file is
    not one, or breaks a limit."""
    _zip_directory_check(stream)
    try:
        archive = zipfile.ZipFile(stream, metadata_encoding="gbk")
    except ZIP_ERRORS as exc:
        raise BillUnreadable(f"the bill is not a zip file ({exc})") from None
    with archive:
        detail = _detail_entry(archive)
        try:
            with archive.open(detail) as raw:
                text = io.TextIOWrapper(raw, encoding="gb18030", newline="")
                lines = _DetailLines(text, settings.BILL_MAX_LINE_CHARS)
                yield from _rows(lines)
        except UnicodeDecodeError as exc:
            raise BillUnreadable(f"the bill is not GBK text (bytes "
                                 f"{exc.object[exc.start:exc.end][:8]!r})") from None
        except csv.Error as exc:
            raise BillUnreadable(f"the bill's CSV is malformed: {exc}") from None
        except ZIP_ERRORS as exc:
            raise BillUnreadable(f"the bill's zip is damaged: {exc}") from None


def _rows(lines: _DetailLines) -> Iterator[BillRow]:
    reader = csv.reader(lines)
    header = [cell.strip() for cell in next(reader, [])]
    index = {COLUMNS[name]: i for i, name in enumerate(header) if name in COLUMNS}
    if len(index) != len(COLUMNS):
        missing = sorted(set(COLUMNS) - set(header))
        raise BillUnreadable(f"the bill's detail block lacks columns {missing}")
    for cells in reader:
        lines.record = 0
        values = {field: cells[i].strip() if i < len(cells) else ""
                  for field, i in index.items()}
        kind = KINDS.get(values["kind"])
        if kind is None:
            continue  # a kind of line a trade bill of page payments does not have
        amount = values["amount"]
        if not AMOUNT_TEXT.fullmatch(amount):
            raise BillUnreadable(f"unreadable amount {amount[:20]!r} (line {lines.number})")
        for field in ID_FIELDS:
            if len(values[field]) > ID_MAX_CHARS:
                raise BillUnreadable(f"{field} longer than {ID_MAX_CHARS} characters "
                                     f"(line {lines.number})")
        yield BillRow(kind=kind, trade_no=values["trade_no"],
                      out_trade_no=values["out_trade_no"],
                      out_request_no=values["out_request_no"], amount=abs(Decimal(amount)),
                      finished_at=values["finished_at"][:20])


def day_window(day: date) -> tuple[datetime, datetime]:
    """The day in Beijing time, as Alipay's bill counts it."""
    start = datetime.combine(day, time(), tzinfo=gateway.BEIJING)
    return start, start + timedelta(days=1)


def _batched(rows: Iterable[BillRow], size: int) -> Iterator[list[BillRow]]:
    batch: list[BillRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class BillReconciled:
    report: BillReport
    applied: int
    refunds: list[int]  # ledger refunds of late payments the bill brought in, to be sent


def bill_reconcile(*, day: date) -> BillReconciled:
    """Reconcile one day against Alipay's bill; idempotent. A bill that is refused (its URL,
    its size, its time) or unreadable makes the day's report FAILED with the reason and keeps
    the day's earlier findings. Raises GatewayUnavailable when Alipay cannot be asked now (the
    task retries)."""
    started = timezone.now()
    timer = perf_counter()
    try:
        reconciled = _bill_reconcile(day, started)
    except Exception:
        metrics.bill_observe(state="error", findings={}, seconds=perf_counter() - timer)
        raise
    findings = dict(reconciled.report.finding_rows.order_by().values("outcome")
                    .annotate(n=Count("id")).values_list("outcome", "n"))
    metrics.bill_observe(state=reconciled.report.state, findings=findings,
                         seconds=perf_counter() - timer)
    return reconciled


def _bill_reconcile(day: date, started: datetime) -> BillReconciled:
    url = gateway.bill_download_url(bill_date=day.isoformat())
    with tempfile.TemporaryFile() as bill:
        try:
            if url is not None:
                gateway.bill_download(url=url, into=bill)
                bill.seek(0)
            report = _report_build(day=day, bill=bill if url is not None else None,
                                   started=started)
        except (gateway.BillDownloadRefused, BillUnreadable) as exc:
            return BillReconciled(_report_failed(day, started, str(exc)), 0, [])
    applied, refunds = _missing_apply(report)
    logger.info(
        "bill reconciled date=%s state=%s alipay_trades=%s our_trades=%s matched=%s "
        "findings=%s applied=%s", day, report.state, report.alipay_trades, report.our_trades,
        report.matched, report.findings, applied)
    return BillReconciled(report, applied, refunds)


def _report_failed(day: date, started: datetime, reason: str) -> BillReport:
    """The day's report marked failed with the reason. Its lines, findings and totals stay
    those of its last good run (the failed run's were rolled back with its transaction)."""
    report, _ = BillReport.objects.update_or_create(
        bill_date=day, defaults={"state": BillReport.State.FAILED, "error": reason,
                                 "started_at": started, "finished_at": timezone.now()})
    logger.error("bill reconciliation failed date=%s: %s", day, reason)
    return report


def _report_build(*, day: date, bill: IO[bytes] | None, started: datetime) -> BillReport:
    with transaction.atomic():
        report, _ = BillReport.objects.select_for_update().get_or_create(
            bill_date=day, defaults={"state": BillReport.State.DONE, "started_at": started})
        report.entries.all().delete()
        report.finding_rows.all().delete()
        if bill is not None:
            for batch in _batched(bill_rows(bill), ENTRY_BATCH):
                BillEntry.objects.bulk_create(BillEntry(
                    report=report, kind=row.kind, trade_no=row.trade_no,
                    out_trade_no=row.out_trade_no, out_request_no=row.out_request_no,
                    amount=row.amount, finished_at=row.finished_at) for row in batch)
        _compare(report, day)
        report.state = BillReport.State.DONE if bill is not None else BillReport.State.NO_BILL
        report.runs += 1
        report.error = ""
        report.started_at = started
        report.finished_at = timezone.now()
        report.save()
    return report


def _compare(report: BillReport, day: date) -> None:
    entries = BillEntry.objects.filter(report=report)
    trades = entries.filter(kind=Kind.TRADE)
    refunds = entries.filter(kind=Kind.REFUND)
    totals = trades.aggregate(n=Count("id"), amount=Sum("amount"))
    refund_totals = refunds.aggregate(n=Count("id"), amount=Sum("amount"))
    report.alipay_trades = totals["n"]
    report.alipay_trade_amount = totals["amount"] or Decimal("0")
    report.alipay_refunds = refund_totals["n"]
    report.alipay_refund_amount = refund_totals["amount"] or Decimal("0")

    start, end = day_window(day)
    ours = Payment.objects.filter(created_at__gte=start, created_at__lt=end)
    our_totals = ours.aggregate(n=Count("id"), amount=Sum("amount"))
    report.our_trades = our_totals["n"]
    report.our_trade_amount = our_totals["amount"] or Decimal("0")

    findings = _Findings()
    payment = Payment.objects.filter(trade_id=OuterRef("trade_no"))
    known = trades.annotate(ours=Exists(payment))
    # Paid at Alipay and unknown here, or applied from the bill by an earlier run of it.
    from_bill = Payment.objects.filter(source=PaymentEvent.Source.BILL).values("trade_id")
    for entry in known.filter(Q(ours=False) | Q(trade_no__in=from_bill)).iterator():
        findings.add(BillFinding(
            report=report, outcome=Outcome.MISSING_HERE, trade_no=entry.trade_no,
            out_trade_no=entry.out_trade_no, alipay_amount=entry.amount,
            note="applied from the bill by an earlier run" if entry.ours else ""))
    # Our amount comes with the line (trade_id is unique): no query per mismatch.
    our_amount = Payment.objects.filter(trade_id=OuterRef("trade_no")).values("amount")[:1]
    differing = trades.annotate(our_amount=Subquery(our_amount)).exclude(
        our_amount=F("amount")).filter(our_amount__isnull=False)
    for mismatch in differing.iterator():
        findings.add(BillFinding(
            report=report, outcome=Outcome.AMOUNT_MISMATCH, trade_no=mismatch.trade_no,
            out_trade_no=mismatch.out_trade_no, alipay_amount=mismatch.amount,
            our_amount=mismatch.our_amount))
    # Paid here that day, and in no bill we hold (a payment just after midnight may be in the
    # previous day's bill).
    in_a_bill = BillEntry.objects.filter(kind=Kind.TRADE, trade_no=OuterRef("trade_id"))
    for payment_row in ours.annotate(billed=Exists(in_a_bill)).filter(billed=False).iterator():
        findings.add(BillFinding(
            report=report, outcome=Outcome.MISSING_AT_ALIPAY, trade_no=payment_row.trade_id,
            out_trade_no=payment_row.order_id, our_amount=payment_row.amount,
            note=f"payment {payment_row.status}"))
    start, end = day_window(day)
    our_refunds = Refund.objects.filter(state=Refund.State.SUCCEEDED, succeeded_at__gte=start,
                                        succeeded_at__lt=end)
    refund_totals = our_refunds.aggregate(n=Count("id"), amount=Sum("amount"))
    report.our_refunds = refund_totals["n"]
    report.our_refund_amount = refund_totals["amount"] or Decimal("0")
    for finding in _refund_findings(report, our_refunds):
        findings.add(finding)
    findings.flush()
    report.findings = sum(findings.counts.values())
    report.matched = (report.alipay_trades - findings.counts[Outcome.MISSING_HERE]
                      - findings.counts[Outcome.AMOUNT_MISMATCH])


class _Findings:
    """Findings written in batches as they are found: a bill of many unknown lines costs rows,
    not memory."""

    def __init__(self) -> None:
        self._batch: list[BillFinding] = []
        self.counts: Counter[str] = Counter()

    def add(self, finding: BillFinding) -> None:
        self._batch.append(finding)
        self.counts[finding.outcome] += 1
        if len(self._batch) >= ENTRY_BATCH:
            self.flush()

    def flush(self) -> None:
        BillFinding.objects.bulk_create(self._batch)
        self._batch.clear()


def _refund_findings(report: BillReport, ours: QuerySet[Refund]) -> Iterator[BillFinding]:
    """Refunds in the bill against the refund ledger (`ours`: the day's succeeded refunds),
    by out_request_no and amount."""
    ledger = Refund.objects.filter(out_request_no=OuterRef("out_request_no"))
    entries = BillEntry.objects.filter(report=report, kind=Kind.REFUND).annotate(
        ours=Exists(ledger),
        matched=Exists(ledger.filter(state=Refund.State.SUCCEEDED, amount=OuterRef("amount"))),
    ).filter(matched=False)
    for entry in entries.iterator():
        refund = (Refund.objects.filter(out_request_no=entry.out_request_no).first()
                  if entry.ours else None)
        if refund is None:
            note = "refunded at Alipay, unknown here"
        elif refund.amount != entry.amount:
            note = "amounts differ"
        else:
            note = f"refunded at Alipay, {refund.state} here"
        yield BillFinding(
            report=report, outcome=Outcome.REFUND_MISMATCH, trade_no=entry.trade_no,
            out_trade_no=entry.out_trade_no, out_request_no=entry.out_request_no,
            alipay_amount=entry.amount, our_amount=refund.amount if refund else None,
            note=note)
    # Refunded here that day, and in no bill we hold (one just after midnight may be in the
    # previous day's).
    in_a_bill = BillEntry.objects.filter(kind=Kind.REFUND,
                                         out_request_no=OuterRef("out_request_no"))
    for refund in ours.annotate(billed=Exists(in_a_bill)).filter(billed=False).select_related(
            "payment").iterator():
        yield BillFinding(
            report=report, outcome=Outcome.REFUND_MISMATCH, trade_no=refund.payment.trade_id,
            out_trade_no=refund.order_id, out_request_no=refund.out_request_no,
            our_amount=refund.amount, note="refunded here, absent from the bill")


def _trade_confirm(out_trade_no: str) -> gateway.TradeStatus | None | Exception:
    try:
        return gateway.trade_query(out_trade_no=out_trade_no)
    except (gateway.GatewayUnavailable, gateway.GatewayRejected) as exc:
        return exc


def _missing_apply(report: BillReport) -> tuple[int, list[int]]:
    """Apply the trades the bill has and we do not, each confirmed with a trade query first
    (the bill is not signed; the query's answer is). How many were applied now, and the late
    payments among them to refund."""
    pending = BillFinding.objects.filter(
        report=report, outcome=Outcome.MISSING_HERE, note="").order_by("id")
    applied = 0
    refunds: list[int] = []
    last = 0
    while batch := list(pending.filter(id__gt=last)[:APPLY_BATCH]):
        last = batch[-1].id
        answers = list(gateway.call_pool().map(_trade_confirm, [f.out_trade_no for f in batch]))
        found: list[tuple[str, gateway.TradeStatus]] = []
        for finding, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                finding.note = f"not applied: Alipay could not be asked ({answer})"[:200]
            elif answer is None or not answer.is_paid or answer.trade_no != finding.trade_no:
                finding.note = "not applied: the trade query does not confirm it"
            else:
                found.append((finding.out_trade_no, answer))
        if found:
            outcome = trades_found_apply(trades=found, source=PaymentEvent.Source.BILL)
            for finding in batch:
                state = outcome.counts_by_order.get(finding.out_trade_no)
                if state is not None:
                    finding.note = f"applied from the bill: event {state}"
                    applied += state == PaymentEvent.State.APPLIED
            refunds.extend(outcome.refunds)
        BillFinding.objects.bulk_update(batch, ["note"])
    return applied, refunds


def entries_prune(*, before: date) -> int:
    """Bill lines of days before `before` (their reports and findings stay)."""
    deleted, _ = BillEntry.objects.filter(report__bill_date__lt=before).delete()
    return int(deleted)
