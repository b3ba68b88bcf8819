"""The operators' dashboard: the last 24 hours of payments, counted by the database.

Selectors only. Every figure is one grouped query bounded by the window on an indexed time
column (or a count on an indexed state), truncated to the minute or hour in SQL, so the page
costs what the window's rows cost, however long the tables' history. Percentiles are
PostgreSQL's `percentile_cont`; elsewhere (SQLite under `make run`) the same interpolation is
done in Python over the window's rows.
"""
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Case, CharField, Count, Min, QuerySet, Sum, Value, When
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from payment import gateway
from payment.models import (
    BillFinding,
    BillReport,
    EventState,
    Payment,
    PaymentAttempt,
    PaymentEvent,
    Refund,
    RefundState,
)

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
WINDOW = timedelta(hours=24)
BILL_DAYS = 7


# PaymentAttempt.last_check_result, as reconciliation writes it, in the operator's words.
CHECK_PAID = ("applied", "stored", "recorded")  # Alipay had a payment nobody told us about
CHECK_UNPAID = ("WAIT_BUYER_PAY", "TRADE_NOT_EXIST", "TRADE_CLOSED")
CHECK_MISMATCH = ("rejected", "dead")  # Alipay's trade does not fit the order
CHECK_SETTLED = ("settled",)  # paid or closed by something else before the query
CHECK_ERROR_PREFIX = "error"  # "error: <what the gateway said>"
CHECK_KINDS = ("paid", "unpaid", "mismatch", "settled", "error", "other")
# PaymentEvent.last_error of an event deferred by the gateway: "GatewayUnavailable: ..." or
# "GatewayRejected: ..." (an unconfirmed return is deferred too, and is no error).
EVENT_GATEWAY_ERROR_PREFIX = "Gateway"


@dataclass(frozen=True)
class Window:
    """[start, end): the 24 hours that end with the current hour."""

    start: datetime
    end: datetime
    now: datetime

    def buckets(self, step: timedelta) -> list[datetime]:
        count = int(WINDOW / step)
        return [timezone.localtime(self.start + i * step) for i in range(count)]


def dashboard_window(*, now: datetime | None = None) -> Window:
    now = now or timezone.now()
    # Hour arithmetic in UTC: local wall-clock arithmetic would slip across a DST change.
    local_hour = timezone.localtime(now).replace(minute=0, second=0, microsecond=0)
    end = local_hour.astimezone(UTC) + HOUR
    return Window(start=end - WINDOW, end=end, now=now)


@dataclass(frozen=True)
class Series:
    key: str
    values: list[int]

    @property
    def total(self) -> int:
        return sum(self.values)


@dataclass(frozen=True)
class BucketCounts:
    """Counts per bucket and per key (a source, a state...), zero-filled over the window."""

    step: timedelta
    buckets: list[datetime]
    series: list[Series]

    @property
    def total(self) -> int:
        return sum(s.total for s in self.series)

    def totals(self) -> dict[str, int]:
        return {s.key: s.total for s in self.series}


def _bucket_counts(
    queryset: QuerySet[Any], *, time_field: str, window: Window, step: timedelta,
    key: str | None, keys: Sequence[str], extra: dict[str, Any] | None = None,
) -> BucketCounts:
    """One GROUP BY (truncated time, key) over the window; keys not listed are appended."""
    trunc = TruncMinute if step == MINUTE else TruncHour
    rows = (
        queryset.filter(**{f"{time_field}__gte": window.start, f"{time_field}__lt": window.end})
        .annotate(**(extra or {}), bucket=trunc(time_field))
        .values("bucket", *([key] if key else []))
        .annotate(n=Count("pk"))
        .order_by()
    )
    buckets = window.buckets(step)
    index = {bucket: i for i, bucket in enumerate(buckets)}
    values: dict[str, list[int]] = {k: [0] * len(buckets) for k in keys}
    for row in rows:
        position = index.get(row["bucket"])
        if position is None:  # cannot happen with whole-hour offsets; never fail the page
            continue
        name = str(row[key]) if key else "all"
        values.setdefault(name, [0] * len(buckets))[position] += row["n"]
    return BucketCounts(step=step, buckets=buckets,
                        series=[Series(k, v) for k, v in values.items()])


# -- payments -----------------------------------------------------------------------------------

def payments_by_source(*, window: Window) -> BucketCounts:
    """Payments stored per minute, by the source that brought them (return, notify, query...)."""
    return _bucket_counts(
        Payment.objects.all(), time_field="created_at", window=window, step=MINUTE,
        key="source", keys=[s.value for s in PaymentEvent.Source],
    )


@dataclass(frozen=True)
class TimeToPaid:
    """Seconds from the order's first pay link to the payment that paid it, per hour."""

    buckets: list[datetime]
    counts: list[int]
    p50: list[float | None]
    p95: list[float | None]
    count: int
    overall_p50: float | None
    overall_p95: float | None


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """`percentile_cont` in Python, for databases without it; `ordered` is sorted."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_to_paid_sql() -> str:
    """Per hour of the window and (ROLLUP, hour NULL) over all of it, in one pass.

    Payments of the window by their index, joined straight to the attempt on order_id (the
    attempt's primary key); only payments that paid their order (not late ones), with a link.
    """
    q = connection.ops.quote_name
    payment, attempt = q(Payment._meta.db_table), q(PaymentAttempt._meta.db_table)
    return (
        "SELECT hour, COUNT(*), "
        "PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY took), "
        "PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY took) "
        "FROM (SELECT "
        "FLOOR(EXTRACT(EPOCH FROM p.created_at - %(start)s::timestamptz) / 3600)::int AS hour, "
        "EXTRACT(EPOCH FROM p.created_at - a.started_at)::double precision AS took "
        f"FROM {payment} p JOIN {attempt} a ON a.order_id = p.order_id "
        "WHERE p.status = %(status)s AND p.created_at >= %(start)s AND p.created_at < %(end)s"
        ") AS paid GROUP BY ROLLUP (hour)"
    )


def _paid_in_window(window: Window) -> QuerySet[Payment]:
    # Payments that paid their order (not late ones, refunded instead), with a pay link issued.
    return Payment.objects.filter(
        status=Payment.Status.APPLIED, created_at__gte=window.start, created_at__lt=window.end,
        order__payment_attempt__started_at__isnull=False,
    )


def time_to_paid(*, window: Window, in_database: bool | None = None) -> TimeToPaid:
    """p50 and p95 per hour and over the window. `in_database`: percentile_cont (PostgreSQL)."""
    if in_database is None:
        in_database = connection.vendor == "postgresql"
    buckets = window.buckets(HOUR)
    counts = [0] * len(buckets)
    p50: list[float | None] = [None] * len(buckets)
    p95: list[float | None] = [None] * len(buckets)
    if in_database:
        overall: tuple[int, float | None, float | None] = (0, None, None)
        with connection.cursor() as cursor:
            cursor.execute(_time_to_paid_sql(), {"start": window.start, "end": window.end,
                                                 "status": Payment.Status.APPLIED})
            for hour, n, median, p95th in cursor.fetchall():
                if hour is None:
                    overall = (n, median, p95th)
                elif 0 <= hour < len(buckets):
                    counts[hour], p50[hour], p95[hour] = n, median, p95th
        return TimeToPaid(buckets, counts, p50, p95, *overall)
    index = {bucket: i for i, bucket in enumerate(buckets)}
    rows = _paid_in_window(window).annotate(bucket=TruncHour("created_at")).values_list(
        "bucket", "created_at", "order__payment_attempt__started_at").order_by()
    per_bucket: dict[int, list[float]] = {}
    every: list[float] = []
    for bucket, created_at, started_at in rows:
        if (i := index.get(bucket)) is not None:
            took = (created_at - started_at).total_seconds()
            per_bucket.setdefault(i, []).append(took)
            every.append(took)
    for i, values in per_bucket.items():
        values.sort()
        counts[i], p50[i], p95[i] = len(values), percentile(values, 0.5), percentile(values, 0.95)
    every.sort()
    return TimeToPaid(buckets, counts, p50, p95, len(every), percentile(every, 0.5),
                      percentile(every, 0.95))


# -- payment events -----------------------------------------------------------------------------

@dataclass(frozen=True)
class EventsNow:
    """Events waiting for a worker and events given up on, whenever they arrived."""

    waiting: int
    dead: int
    oldest_waiting: datetime | None


def events_by_state(*, window: Window) -> BucketCounts:
    """Events per hour of arrival, by the state they are in now."""
    return _bucket_counts(
        PaymentEvent.objects.all(), time_field="received_at", window=window, step=HOUR,
        key="state", keys=[s.value for s in EventState],
    )


def events_now() -> EventsNow:
    # Both on the (state, received_at) index.
    waiting = PaymentEvent.objects.filter(state=EventState.RECEIVED)
    return EventsNow(
        waiting=waiting.count(),
        dead=PaymentEvent.objects.filter(state=EventState.DEAD).count(),
        oldest_waiting=waiting.aggregate(oldest=Min("received_at"))["oldest"],
    )


# -- reconciliation -----------------------------------------------------------------------------

def _check_kind() -> Case:
    return Case(
        When(last_check_result__in=CHECK_PAID, then=Value("paid")),
        When(last_check_result__in=CHECK_UNPAID, then=Value("unpaid")),
        When(last_check_result__in=CHECK_MISMATCH, then=Value("mismatch")),
        When(last_check_result__in=CHECK_SETTLED, then=Value("settled")),
        When(last_check_result__startswith=CHECK_ERROR_PREFIX, then=Value("error")),
        default=Value("other"),
        output_field=CharField(),
    )


def reconciliation_checks(*, window: Window) -> BucketCounts:
    """Orders whose latest reconciliation check fell in each hour, by what it found."""
    return _bucket_counts(
        PaymentAttempt.objects.all(), time_field="last_checked_at", window=window, step=HOUR,
        key="kind", keys=CHECK_KINDS, extra={"kind": _check_kind()},
    )


@dataclass(frozen=True)
class BillDay:
    """A day of Alipay's bill: its reconciliation report, or None when there is none (yet)."""

    bill_date: date
    report_id: int | None
    state: str
    matched: int
    findings: dict[str, int]  # by BillFinding.Outcome

    @property
    def total(self) -> int:
        return sum(self.findings.values())


def bill_days(*, days: int = BILL_DAYS, today: date | None = None) -> list[BillDay]:
    """The last `days` days before today in Alipay's time (bills are T+1), oldest first."""
    today = today or timezone.now().astimezone(gateway.BEIJING).date()
    first = today - timedelta(days=days)
    reports = {
        day: (pk, state, matched) for pk, day, state, matched in
        BillReport.objects.filter(bill_date__gte=first, bill_date__lt=today)
        .values_list("pk", "bill_date", "state", "matched")
    }
    counts: dict[int, dict[str, int]] = {}
    for report_id, outcome, n in (
        BillFinding.objects.filter(report_id__in=[r[0] for r in reports.values()])
        .values("report_id", "outcome").annotate(n=Count("pk")).order_by()
        .values_list("report_id", "outcome", "n")
    ):
        counts.setdefault(report_id, {})[outcome] = n
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        pk, state, matched = reports.get(day, (None, "", 0))
        found = counts.get(pk, {}) if pk is not None else {}
        result.append(BillDay(day, pk, state, matched,
                              {o.value: found.get(o.value, 0) for o in BillFinding.Outcome}))
    return result


# -- gateway errors -----------------------------------------------------------------------------

def gateway_errors(*, window: Window) -> BucketCounts:
    """Calls to Alipay that failed, per hour, where each kind of work records them:
    events deferred by a gateway error (by arrival), reconciliation checks that could not ask
    (by check), refunds with an error or a refusal on record (by request)."""
    parts = {
        "events": _bucket_counts(
            PaymentEvent.objects.filter(last_error__startswith=EVENT_GATEWAY_ERROR_PREFIX),
            time_field="received_at", window=window, step=HOUR, key=None, keys=["all"]),
        "reconciliation": _bucket_counts(
            PaymentAttempt.objects.filter(last_check_result__startswith=CHECK_ERROR_PREFIX),
            time_field="last_checked_at", window=window, step=HOUR, key=None, keys=["all"]),
        "refunds": _bucket_counts(
            Refund.objects.exclude(last_error=""), time_field="requested_at", window=window,
            step=HOUR, key=None, keys=["all"]),
    }
    return BucketCounts(step=HOUR, buckets=window.buckets(HOUR),
                        series=[Series(name, c.series[0].values) for name, c in parts.items()])


# -- refunds ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefundsNow:
    open_by_state: dict[str, int]  # requested, sent, unknown: whenever asked for
    succeeded_amount: Decimal  # refunded in the window (by request time)


def refunds_by_state(*, window: Window) -> BucketCounts:
    """Refunds per hour they were asked for, by the state they are in now."""
    return _bucket_counts(
        Refund.objects.all(), time_field="requested_at", window=window, step=HOUR,
        key="state", keys=[s.value for s in RefundState],
    )


def refunds_now(*, window: Window) -> RefundsNow:
    open_counts = dict(
        Refund.objects.filter(state__in=Refund.OPEN_STATES).values("state")
        .annotate(n=Count("pk")).order_by().values_list("state", "n")
    )
    amount = Refund.objects.filter(
        state=RefundState.SUCCEEDED, requested_at__gte=window.start, requested_at__lt=window.end,
    ).aggregate(total=Sum("amount"))["total"]
    return RefundsNow(
        open_by_state={s: open_counts.get(s, 0) for s in Refund.OPEN_STATES},
        succeeded_amount=amount or Decimal("0.00"),
    )
