"""Daily reconciliation against Alipay's trade bill: our books and Alipay's, line by line.

The bill of a day (`alipay.data.dataservice.bill.downloadurl.query`, bill_type=trade, T+1) is a
zip of GBK-encoded CSV: `#` header lines, the detail block between the 业务明细列表 markers
(one line per trade and per refund), totals after. It is streamed to a temporary file and its
detail lines into BillEntry rows in batches, so a day of 100,000 trades never sits in memory;
the comparison with our payments and refunds is then a few set-based queries.

Outcomes per line: matched; paid at Alipay but unknown or unpaid here (confirmed with a trade
query, then applied through the normal idempotent path with source "bill"); paid here but
absent from the bill; amount mismatch; refund mismatch. A rerun of a day replaces its report
and applies nothing twice.
"""
import csv
import io
import logging
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from time import perf_counter
from typing import IO

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
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


class BillUnreadable(Exception):
    """The downloaded file is not a trade bill we can read."""


@dataclass(frozen=True)
class BillRow:
    kind: str
    trade_no: str
    out_trade_no: str
    out_request_no: str
    amount: Decimal
    finished_at: str


def _detail_lines(text: IO[str]) -> Iterator[str]:
    """The lines of the detail block, its column header first."""
    inside = False
    for line in text:
        if line.startswith("#"):
            if DETAIL_MARK in line:
                if "结束" in line:
                    return
                inside = True
            continue
        if inside and line.strip():
            yield line


def bill_rows(stream: IO[bytes]) -> Iterator[BillRow]:
    """The detail lines of a trade bill zip, one at a time."""
    try:
        archive = zipfile.ZipFile(stream, metadata_encoding="gbk")
    except zipfile.BadZipFile:
        raise BillUnreadable("the bill is not a zip file") from None
    with archive:
        # The detail file; Alipay adds a 汇总 (summary) file beside it.
        names = [n for n in archive.namelist() if n.endswith(".csv") and "汇总" not in n]
        if len(names) != 1:
            raise BillUnreadable(f"expected one detail CSV in the bill, found {len(names)}")
        with archive.open(names[0]) as raw:
            text = io.TextIOWrapper(raw, encoding="gb18030", newline="")
            yield from _rows(csv.reader(_detail_lines(text)))


def _rows(reader: Iterator[list[str]]) -> Iterator[BillRow]:
    header = [cell.strip() for cell in next(reader, [])]
    index = {COLUMNS[name]: i for i, name in enumerate(header) if name in COLUMNS}
    if len(index) != len(COLUMNS):
        missing = sorted(set(COLUMNS) - set(header))
        raise BillUnreadable(f"the bill's detail block lacks columns {missing}")
    for cells in reader:
        values = {field: cells[i].strip() if i < len(cells) else ""
                  for field, i in index.items()}
        kind = KINDS.get(values["kind"])
        if kind is None:
            continue  # a kind of line a trade bill of page payments does not have
        try:
            amount = abs(Decimal(values["amount"]))
        except InvalidOperation:
            raise BillUnreadable(f"unreadable amount {values['amount'][:20]!r}") from None
        yield BillRow(kind=kind, trade_no=values["trade_no"][:64],
                      out_trade_no=values["out_trade_no"][:64],
                      out_request_no=values["out_request_no"][:64], amount=amount,
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
    """Reconcile one day against Alipay's bill; idempotent. Raises GatewayUnavailable when
    Alipay cannot be asked now (the task retries)."""
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
        if url is not None:
            gateway.bill_download(url=url, into=bill)
            bill.seek(0)
        try:
            report = _report_build(day=day, bill=bill if url is not None else None,
                                   started=started)
        except BillUnreadable as exc:
            report, _ = BillReport.objects.update_or_create(
                bill_date=day, defaults={"state": BillReport.State.FAILED, "error": str(exc),
                                         "started_at": started, "finished_at": timezone.now()})
            logger.error("bill reconciliation failed date=%s: %s", day, exc)
            return BillReconciled(report, 0, [])
    applied, refunds = _missing_apply(report)
    logger.info(
        "bill reconciled date=%s state=%s alipay_trades=%s our_trades=%s matched=%s "
        "findings=%s applied=%s", day, report.state, report.alipay_trades, report.our_trades,
        report.matched, report.findings, applied)
    return BillReconciled(report, applied, refunds)


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

    findings: list[BillFinding] = []
    payment = Payment.objects.filter(trade_id=OuterRef("trade_no"))
    known = trades.annotate(ours=Exists(payment))
    # Paid at Alipay and unknown here, or applied from the bill by an earlier run of it.
    from_bill = Payment.objects.filter(source=PaymentEvent.Source.BILL).values("trade_id")
    for entry in known.filter(Q(ours=False) | Q(trade_no__in=from_bill)).iterator():
        findings.append(BillFinding(
            report=report, outcome=Outcome.MISSING_HERE, trade_no=entry.trade_no,
            out_trade_no=entry.out_trade_no, alipay_amount=entry.amount,
            note="applied from the bill by an earlier run" if entry.ours else ""))
    # Our amount comes with the line (trade_id is unique): no query per mismatch.
    our_amount = Payment.objects.filter(trade_id=OuterRef("trade_no")).values("amount")[:1]
    differing = trades.annotate(our_amount=Subquery(our_amount)).exclude(
        our_amount=F("amount")).filter(our_amount__isnull=False)
    for mismatch in differing.iterator():
        findings.append(BillFinding(
            report=report, outcome=Outcome.AMOUNT_MISMATCH, trade_no=mismatch.trade_no,
            out_trade_no=mismatch.out_trade_no, alipay_amount=mismatch.amount,
            our_amount=mismatch.our_amount))
    # Paid here that day, and in no bill we hold (a payment just after midnight may be in the
    # previous day's bill).
    in_a_bill = BillEntry.objects.filter(kind=Kind.TRADE, trade_no=OuterRef("trade_id"))
    for payment_row in ours.annotate(billed=Exists(in_a_bill)).filter(billed=False).iterator():
        findings.append(BillFinding(
            report=report, outcome=Outcome.MISSING_AT_ALIPAY, trade_no=payment_row.trade_id,
            out_trade_no=payment_row.order_id, our_amount=payment_row.amount,
            note=f"payment {payment_row.status}"))
    findings.extend(_refund_findings(report, day))
    BillFinding.objects.bulk_create(findings, batch_size=ENTRY_BATCH)
    report.findings = len(findings)
    report.matched = report.alipay_trades - sum(
        1 for f in findings if f.outcome in (Outcome.MISSING_HERE, Outcome.AMOUNT_MISMATCH))


def _refund_findings(report: BillReport, day: date) -> list[BillFinding]:
    """Refunds in the bill against the refund ledger, by out_request_no and amount."""
    findings: list[BillFinding] = []
    start, end = day_window(day)
    ours = Refund.objects.filter(state=Refund.State.SUCCEEDED, succeeded_at__gte=start,
                                 succeeded_at__lt=end)
    totals = ours.aggregate(n=Count("id"), amount=Sum("amount"))
    report.our_refunds = totals["n"]
    report.our_refund_amount = totals["amount"] or Decimal("0")
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
        findings.append(BillFinding(
            report=report, outcome=Outcome.REFUND_MISMATCH, trade_no=entry.trade_no,
            out_trade_no=entry.out_trade_no, out_request_no=entry.out_request_no,
            alipay_amount=entry.amount, our_amount=refund.amount if refund else None,
            note=note))
    # Refunded here that day, and in no bill we hold (one just after midnight may be in the
    # previous day's).
    in_a_bill = BillEntry.objects.filter(kind=Kind.REFUND,
                                         out_request_no=OuterRef("out_request_no"))
    for refund in ours.annotate(billed=Exists(in_a_bill)).filter(billed=False).select_related(
            "payment").iterator():
        findings.append(BillFinding(
            report=report, outcome=Outcome.REFUND_MISMATCH, trade_no=refund.payment.trade_id,
            out_trade_no=refund.order_id, out_request_no=refund.out_request_no,
            our_amount=refund.amount, note="refunded here, absent from the bill"))
    return findings


def _trade_confirm(out_trade_no: str) -> gateway.TradeStatus | None | Exception:
    try:
        return gateway.trade_query(out_trade_no=out_trade_no)
    except (gateway.GatewayUnavailable, gateway.GatewayRejected) as exc:
        return exc


def _missing_apply(report: BillReport) -> tuple[int, list[int]]:
    """Apply the trades the bill has and we do not, each confirmed with a trade query first
    (the bill is not signed; the query's answer is). How many were applied now, and the late
    payments among them to refund."""
    pending = list(BillFinding.objects.filter(
        report=report, outcome=Outcome.MISSING_HERE, note=""))
    applied = 0
    refunds: list[int] = []
    for start in range(0, len(pending), APPLY_BATCH):
        batch = pending[start:start + APPLY_BATCH]
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
