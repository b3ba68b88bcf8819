"""The operators' dashboard page in the admin: the last 24 hours of payments at a glance.

Whoever may see the payment events may open it. Each section, and each figure in it, is shown
only to who may open the admin list behind it, and links to that list, filtered to the same
rows: the page shows nobody what the lists would hide.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString
from django.views.decorators.http import require_safe

from backoffice.dashboard import queries
from backoffice.dashboard.charts import WIDE, WIDTH, ChartSeries, lines, seconds_text, stacked_bars
from backoffice.dashboard.queries import HOUR, BucketCounts, Window
from payment.gateway.checks import EXPIRY_WARNING_DAYS
from payment.gateway.report import certificates_report
from payment.models import BillReport, Payment, PaymentAttempt, PaymentEvent, Refund

PERMISSION = "payment.view_paymentevent"

SOURCE_TONES = {"return": "tone-a", "notify": "tone-b", "query": "tone-c", "bill": "tone-d",
                "operator": "tone-e", "expiry": "tone-muted"}
EVENT_LABELS = {"received": "waiting", "applied": "applied", "recorded": "recorded",
                "rejected": "rejected", "dead": "dead"}
EVENT_TONES = {"applied": "tone-ok", "recorded": "tone-muted", "received": "tone-wait",
               "rejected": "tone-warn", "dead": "tone-bad"}
CHECK_TONES = {"paid": "tone-a", "unpaid": "tone-muted", "mismatch": "tone-bad",
               "settled": "tone-ok", "error": "tone-warn", "other": "tone-e"}
CHECK_LABELS = {"paid": "paid at Alipay, found by the check", "unpaid": "not paid (yet)",
                "mismatch": "does not fit the order", "settled": "settled before the check",
                "error": "Alipay could not be asked", "other": "other"}
CHECK_FILTERS: dict[str, dict[str, str]] = {
    "paid": {"last_check_result__in": ",".join(queries.CHECK_PAID)},
    "unpaid": {"last_check_result__in": ",".join(queries.CHECK_UNPAID)},
    "mismatch": {"last_check_result__in": ",".join(queries.CHECK_MISMATCH)},
    "settled": {"last_check_result__in": ",".join(queries.CHECK_SETTLED)},
    "error": {"last_check_result__startswith": queries.CHECK_ERROR_PREFIX},
    "other": {},  # no admin filter for "none of the above": no link
}
FINDING_TONES = {"missing_here": "tone-warn", "missing_at_alipay": "tone-bad",
                 "amount_mismatch": "tone-c", "refund_mismatch": "tone-d"}
ERROR_TONES = {"events": "tone-a", "reconciliation": "tone-warn", "refunds": "tone-bad"}
ERROR_LABELS = {"events": "payment events deferred by the gateway",
                "reconciliation": "reconciliation queries that failed",
                "refunds": "refunds with an error or a refusal"}
REFUND_TONES = {"requested": "tone-wait", "sent": "tone-b", "unknown": "tone-warn",
                "succeeded": "tone-ok", "failed": "tone-bad"}


@dataclass(frozen=True)
class Figure:
    """A number on the page: its text, the raw value (data-value) and the list behind it."""

    key: str
    label: str
    value: int | float | Decimal | None
    text: str = ""
    href: str = ""
    tone: str = ""

    @property
    def shown(self) -> str:
        if self.text:
            return self.text
        if self.value is None:
            return "–"
        if isinstance(self.value, Decimal):
            return f"{self.value:,.2f}"
        return f"{self.value:,}"

    @property
    def data_value(self) -> str:
        if self.value is None:
            return ""
        return f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    note: str
    chart: SafeString
    figures: list[Figure] = field(default_factory=list)
    legend: list[Figure] = field(default_factory=list)
    second_chart: SafeString | None = None
    table: list[dict[str, Any]] = field(default_factory=list)
    table_note: str = ""
    wide: bool = False


class _Links:
    """Admin list addresses for the user, or '' where the user may not open the list."""

    def __init__(self, request: HttpRequest, window: Window) -> None:
        self.window = window
        self.allowed: dict[type[Model], bool] = {}
        for model in (Payment, PaymentEvent, PaymentAttempt, Refund, BillReport):
            model_admin = admin.site.get_model_admin(model)
            self.allowed[model] = model_admin.has_view_permission(request)

    def changelist(self, model: type[Model], params: dict[str, str] | None = None) -> str:
        if not self.allowed[model]:
            return ""
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        return f"{url}?{urlencode(params)}" if params else url

    def between(self, model: type[Model], time_field: str, start: datetime, end: datetime,
                **params: str) -> str:
        return self.changelist(model, {**params, f"{time_field}__gte": _iso(start),
                                       f"{time_field}__lt": _iso(end)})

    def window_list(self, model: type[Model], time_field: str, **params: str) -> str:
        return self.between(model, time_field, self.window.start, self.window.end, **params)

    def per_bucket(self, model: type[Model], time_field: str, buckets: Sequence[datetime],
                   step: timedelta, **params: str) -> list[str] | None:
        if not self.allowed[model]:
            return None
        return [self.between(model, time_field, b, b + step, **params) for b in buckets]

    def change(self, model: type[Model], pk: int) -> str:
        if not self.allowed[model]:
            return ""
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change",
                       args=[pk])


def _iso(moment: datetime) -> str:
    return timezone.localtime(moment).isoformat()


def _labels(buckets: Sequence[datetime], step: timedelta) -> tuple[list[str], list[str]]:
    """Tooltip labels and x axis ticks (every three hours) for the buckets."""
    labels, ticks = [], []
    for bucket in buckets:
        end = bucket + step
        labels.append(f"{bucket:%d %b %H:%M}–{end:%H:%M}" if step == HOUR
                      else f"{bucket:%d %b %H:%M}")
        on_tick = bucket.minute == 0 and bucket.hour % 3 == 0
        ticks.append(f"{bucket:%H:%M}" if on_tick else "")
    return labels, ticks


def _now_index(window: Window, step: timedelta) -> float:
    return (window.now - window.start) / step


def _counts_chart(
    counts: BucketCounts, window: Window, caption: str, tones: dict[str, str],
    labels_by_key: dict[str, str] | None = None,
    hrefs: Callable[[str], list[str] | None] | None = None,
    href: Callable[[str], str] | None = None, width: int = WIDTH,
) -> SafeString:
    labels, ticks = _labels(counts.buckets, counts.step)
    series = [
        ChartSeries(key=s.key, label=(labels_by_key or {}).get(s.key, s.key), values=s.values,
                    tone=tones.get(s.key, "tone-muted"),
                    hrefs=hrefs(s.key) if hrefs else None, href=href(s.key) if href else "")
        for s in counts.series
    ]
    return stacked_bars(labels=labels, ticks=ticks, series=series, caption=caption,
                        now_index=_now_index(window, counts.step), width=width)


def _payments_section(window: Window, links: _Links) -> Section:
    counts = queries.payments_by_source(window=window)
    labels = dict(PaymentEvent.Source.choices)
    peak = max((sum(s.values[i] for s in counts.series) for i in range(len(counts.buckets))),
               default=0)
    return Section(
        key="payments", wide=True,
        title="Payments per minute, by source",
        note="Payments stored in each minute (late ones to be refunded included), by what "
             "brought them: the buyer's return, Alipay's notification, a trade query, the bill.",
        chart=_counts_chart(
            counts, window, "Payments per minute by source", SOURCE_TONES, labels,
            href=lambda key: links.window_list(Payment, "created_at", source__exact=key),
            width=WIDE),
        figures=[
            Figure("payments.total", "payments", counts.total,
                   href=links.window_list(Payment, "created_at")),
            Figure("payments.peak_minute", "busiest minute", peak),
        ],
        legend=[Figure(f"payments.source.{s.key}", labels.get(s.key, s.key), s.total,
                       tone=SOURCE_TONES.get(s.key, "tone-muted"),
                       href=links.window_list(Payment, "created_at", source__exact=s.key))
                for s in counts.series],
    )


def _time_to_paid_section(window: Window, links: _Links) -> Section:
    took = queries.time_to_paid(window=window)
    labels, ticks = _labels(took.buckets, HOUR)
    hrefs = links.per_bucket(Payment, "created_at", took.buckets, HOUR, status__exact="applied")
    series = [
        ChartSeries("p50", "median (p50)", took.p50, "tone-a", hrefs),
        ChartSeries("p95", "p95", took.p95, "tone-warn", hrefs),
    ]
    return Section(
        key="time_to_paid",
        title="Time to paid",
        note="From the order's first pay link to the payment that paid it, per hour; each dot "
             "leads to the hour's payments.",
        chart=lines(labels=labels, ticks=ticks, series=series, caption="Time to paid per hour",
                    now_index=_now_index(window, HOUR)),
        figures=[
            # No link: the admin cannot filter on "has a pay link"; the hours' dots link.
            Figure("time_to_paid.count", "orders paid", took.count),
            Figure("time_to_paid.p50", "median", took.overall_p50,
                   text=seconds_text(took.overall_p50) if took.overall_p50 is not None else ""),
            Figure("time_to_paid.p95", "p95", took.overall_p95,
                   text=seconds_text(took.overall_p95) if took.overall_p95 is not None else ""),
        ],
        legend=[Figure(f"time_to_paid.legend.{s.key}", s.label, None, tone=s.tone)
                for s in series],
    )


def _events_section(window: Window, links: _Links) -> Section:
    counts = queries.events_by_state(window=window)
    now = queries.events_now()
    oldest = (window.now - now.oldest_waiting).total_seconds() if now.oldest_waiting else None
    return Section(
        key="events",
        title="Payment events: waiting, dead, rejected",
        note="Everything Alipay sent or told us, per hour of arrival, by the state it is in "
             "now. Waiting and dead are counted whenever the event arrived.",
        chart=_counts_chart(
            counts, window, "Payment events per hour by state", EVENT_TONES, EVENT_LABELS,
            hrefs=lambda key: links.per_bucket(PaymentEvent, "received_at", counts.buckets,
                                               HOUR, state__exact=key)),
        figures=[
            Figure("events.waiting", "waiting now", now.waiting, tone="tone-wait",
                   href=links.changelist(PaymentEvent, {"state__exact": "received"})),
            Figure("events.oldest_waiting", "oldest waiting", oldest,
                   text=seconds_text(oldest) if oldest is not None else "–"),
            Figure("events.dead", "dead now", now.dead, tone="tone-bad",
                   href=links.changelist(PaymentEvent, {"state__exact": "dead"})),
        ],
        legend=[Figure(f"events.state.{s.key}", EVENT_LABELS.get(s.key, s.key), s.total,
                       tone=EVENT_TONES.get(s.key, "tone-muted"),
                       href=links.window_list(PaymentEvent, "received_at", state__exact=s.key))
                for s in counts.series],
    )


def _not_reconciled(days: Sequence[queries.BillDay]) -> str:
    missing = [f"{d.bill_date:%d %b}" for d in days if d.report_id is None]
    if not missing:
        return ""
    return f"No reconciliation report for {', '.join(missing)}."


def _reconciliation_section(window: Window, links: _Links) -> Section:
    counts = queries.reconciliation_checks(window=window)
    bills_shown = links.allowed[BillReport]  # the bill's findings, to who may open the reports
    days = queries.bill_days() if bills_shown else []
    outcomes = dict(queries.BillFinding.Outcome.choices)
    reports = [links.change(BillReport, d.report_id) if d.report_id else "" for d in days]
    bills_chart = stacked_bars(
        labels=[f"bill of {d.bill_date:%d %b}: {d.state or 'not reconciled'}" for d in days],
        ticks=[f"{d.bill_date:%d %b}" for d in days],
        series=[ChartSeries(o, outcomes[o], [d.findings[o] for d in days],
                            FINDING_TONES.get(o, "tone-muted"),
                            reports if links.allowed[BillReport] else None)
                for o in outcomes],
        caption="Findings of the daily bill reconciliation", categories=True)
    return Section(
        key="reconciliation",
        title="Reconciliation findings",
        note="Orders whose latest trade query fell in each hour, by what Alipay said; below, "
             "the latest days compared with Alipay's bill.",
        chart=_counts_chart(
            counts, window, "Reconciliation checks per hour by outcome", CHECK_TONES,
            CHECK_LABELS,
            hrefs=lambda key: links.per_bucket(PaymentAttempt, "last_checked_at",
                                               counts.buckets, HOUR, **CHECK_FILTERS[key])
            if CHECK_FILTERS[key] else None),
        figures=[
            Figure("reconciliation.total", "orders checked", counts.total,
                   href=links.window_list(PaymentAttempt, "last_checked_at")),
            Figure("reconciliation.found", "payments found", counts.totals()["paid"],
                   tone="tone-a", href=links.window_list(PaymentAttempt, "last_checked_at",
                                                         **CHECK_FILTERS["paid"])),
            *([Figure("bills.findings", f"bill findings ({len(days)} days)",
                      sum(d.total for d in days), tone="tone-bad",
                      href=links.changelist(BillReport, {"findings": "yes"}))]
              if bills_shown else []),
        ],
        legend=[Figure(f"reconciliation.{s.key}", CHECK_LABELS[s.key], s.total,
                       tone=CHECK_TONES[s.key],
                       href=links.window_list(PaymentAttempt, "last_checked_at",
                                              **CHECK_FILTERS[s.key])
                       if CHECK_FILTERS[s.key] else "")
                for s in counts.series],
        second_chart=bills_chart if bills_shown else None,
        table=[{"figure": Figure(f"bills.{d.bill_date.isoformat()}.findings",
                                 f"{d.bill_date:%d %b %Y}", d.total if d.report_id else None,
                                 tone="tone-bad", href=report),
                "state": d.state or "not reconciled", "matched": d.matched,
                "by_outcome": [(outcomes[o], n, FINDING_TONES[o])
                               for o, n in d.findings.items() if n]}
               for d, report in reversed(list(zip(days, reports, strict=True)))
               if d.report_id is not None and bills_shown],
        table_note=_not_reconciled(days) if bills_shown else "",
    )


def _errors_section(window: Window, links: _Links) -> Section:
    counts = queries.gateway_errors(window=window)
    where = {
        "events": (PaymentEvent, "received_at",
                   {"last_error__startswith": queries.EVENT_GATEWAY_ERROR_PREFIX}),
        "reconciliation": (PaymentAttempt, "last_checked_at",
                           {"last_check_result__startswith": queries.CHECK_ERROR_PREFIX}),
        "refunds": (Refund, "requested_at", {"last_error__gt": ""}),
    }
    # Each kind of error only to who may open its list.
    counts = replace(counts, series=[s for s in counts.series
                                     if links.allowed[where[s.key][0]]])
    return Section(
        key="errors",
        title="Gateway errors",
        note="Calls to Alipay that failed or were refused, per hour: events deferred (by "
             "arrival), reconciliation queries (by check), refunds (by request).",
        chart=_counts_chart(
            counts, window, "Gateway errors per hour", ERROR_TONES, ERROR_LABELS,
            hrefs=lambda key: links.per_bucket(where[key][0], where[key][1], counts.buckets,
                                               HOUR, **where[key][2])),
        figures=[Figure("errors.total", "errors", counts.total, tone="tone-bad")],
        legend=[Figure(f"errors.{s.key}", ERROR_LABELS[s.key], s.total, tone=ERROR_TONES[s.key],
                       href=links.window_list(where[s.key][0], where[s.key][1],
                                              **where[s.key][2]))
                for s in counts.series],
    )


def _refunds_section(window: Window, links: _Links) -> Section:
    counts = queries.refunds_by_state(window=window)
    now = queries.refunds_now(window=window)
    return Section(
        key="refunds",
        title="Refunds",
        note="Refunds asked for in each hour, by the state they are in now. Open refunds are "
             "counted whenever they were asked for.",
        chart=_counts_chart(
            counts, window, "Refunds per hour by state", REFUND_TONES,
            hrefs=lambda key: links.per_bucket(Refund, "requested_at", counts.buckets, HOUR,
                                               state__exact=key)),
        figures=[
            Figure("refunds.open", "open now", sum(now.open_by_state.values()),
                   tone="tone-wait",
                   href=links.changelist(Refund, {"state__in": ",".join(Refund.OPEN_STATES)})),
            Figure("refunds.succeeded_amount", "refunded (yuan)", now.succeeded_amount,
                   tone="tone-ok",
                   href=links.window_list(Refund, "requested_at", state__exact="succeeded")),
        ],
        legend=[Figure(f"refunds.state.{s.key}", s.key, s.total,
                       tone=REFUND_TONES.get(s.key, "tone-muted"),
                       href=links.window_list(Refund, "requested_at", state__exact=s.key))
                for s in counts.series],
    )


@require_safe
def dashboard_view(request: HttpRequest) -> HttpResponse:
    """GET /admin/dashboard/: staff with the permission to view payment events."""
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    window = queries.dashboard_window()
    links = _Links(request, window)
    # A section only to who may open the list behind it (PaymentEvent's is the page's own
    # permission); within one, a figure the same way (bills, each kind of gateway error).
    sections = [builder(window, links) for builder, model in (
        (_payments_section, Payment), (_time_to_paid_section, Payment),
        (_events_section, PaymentEvent), (_reconciliation_section, PaymentAttempt),
        (_errors_section, PaymentEvent), (_refunds_section, Refund)) if links.allowed[model]]
    now = timezone.now()
    certificates = [
        {"info": info, "days_left": f"{info.days_left(now):.0f}",
         "tone": "tone-bad" if info.problem or info.days_left(now) < EXPIRY_WARNING_DAYS
         else "tone-ok"}
        for info in certificates_report(now)
    ] if request.user.has_perm("payment.view_alipaycertificate") else []
    context = {
        **admin.site.each_context(request),
        "title": "Payments dashboard",
        "certificates": certificates,
        "window_start": timezone.localtime(window.start),
        "window_now": timezone.localtime(window.now),
        "timezone_name": timezone.get_current_timezone_name(),
        "sections": sections,
    }
    return TemplateResponse(request, "admin/payment/dashboard.html", context)

