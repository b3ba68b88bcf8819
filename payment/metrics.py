"""The payment service's metrics (Prometheus), counted where the work happens.

Labels are few-valued: sources, outcomes, states, Alipay's method names and error codes;
never an order, trade or event id. Names and meanings are listed in README.md
("Operations"); infra/metrics.py serves them.
"""
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ParamSpec
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client import Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

BEIJING = ZoneInfo("Asia/Shanghai")
# Seconds, from a fast answer to a buyer who comes back after lunch.
HUMAN_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
PROCESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Metrics:
    """The metrics, made on first use in a process.

    Multiprocess mode is chosen by PROMETHEUS_MULTIPROC_DIR when a metric is made, and a
    Celery worker's main process sets it only after Django (and this module) is loaded: made
    at import, the metrics would keep their samples in memory, where no scrape sees them.
    """

    def __init__(self) -> None:
        values.ValueClass = values.get_value_class()
        self.events_received = Counter(
            "shop_payment_events_received",
            "Returns and notifications that reached the intake, and events the workers learned "
            "(query, bill), by outcome: stored, duplicate (a repeat, or a reload answered from "
            "its payment), refused (not Alipay's), throttled, busy (the web process at "
            "INTAKE_MAX_ACTIVE), error (not stored)",
            ["source", "outcome"])
        self.events_processed = Counter(
            "shop_payment_events_processed",
            "Payment events a worker finished (applied, recorded, rejected, dead) or put off "
            "(deferred)", ["source", "outcome"])
        self.time_to_paid = Histogram(
            "shop_payment_time_to_paid_seconds",
            "From an order's first pay link to its payment applied", buckets=HUMAN_BUCKETS)
        self.event_to_applied = Histogram(
            "shop_payment_event_to_applied_seconds",
            "From an event's arrival (a return: the buyer back on the shop) to its settling as "
            "applied", ["source"], buckets=PROCESS_BUCKETS)
        self.notify_lag = Histogram(
            "shop_payment_notify_lag_seconds",
            "From Alipay's notify_time to the notification stored here",
            buckets=PROCESS_BUCKETS)
        self.reconcile_checks = Counter(
            "shop_reconcile_checks",
            "Trade queries about unpaid orders, by outcome (unpaid, error, settled, or the "
            "state of the event a paid trade became: applied is a payment only reconciliation "
            "found)", ["outcome"])
        self.reconcile_duration = Histogram(
            "shop_reconcile_batch_duration_seconds",
            "One reconciliation batch, queries included", buckets=RUN_BUCKETS)
        self.bill_runs = Counter(
            "shop_bill_reconciliations",
            "Days reconciled against Alipay's bill, by report state (error: it raised)",
            ["state"])
        self.bill_findings = Counter(
            "shop_bill_findings",
            "Findings of bill reconciliations (a rerun of a day counts again)", ["outcome"])
        self.bill_duration = Histogram(
            "shop_bill_reconcile_duration_seconds",
            "One day's bill reconciliation, download included", buckets=RUN_BUCKETS)
        self.refunds = Counter(
            "shop_refunds", "Refunds entering a state of the ledger (requested when asked for)",
            ["state"])
        self.gateway_duration = Histogram(
            "shop_alipay_request_duration_seconds", "Calls to Alipay's gateway, by method",
            ["method"], buckets=CALL_BUCKETS)
        self.gateway_errors = Counter(
            "shop_alipay_errors",
            "Gateway calls that failed: Alipay's code and sub_code, or transport (with the "
            "error's kind), signature, unreadable", ["method", "code", "sub_code"])
        self.signatures_verified = Counter(
            "shop_alipay_signatures_verified",
            "Alipay signatures verified, by the key that verified them (a certificate's "
            "serial number, or key- and the public key's SHA-256 prefix) and kind (answer, "
            "params: a return or notification)", ["key", "kind"])
        self.certificate_downloads = Counter(
            "shop_alipay_certificate_downloads",
            "Alipay certificates downloaded after an answer named an unknown one, by outcome "
            "(trusted, refused: it does not chain to the root)", ["outcome"])
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, metric: str, *values: str) -> Any:
        """`labels(*values)` of the named metric (values in its labels' order), kept for the
        process: prometheus_client takes the metric's lock and checks the values on every
        call, three times per trade query on the gateway threads. Label values are few, and
        prometheus_client keeps every child anyway."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, metric).labels(*values)
        return found


_made: _Metrics | None = None
_made_lock = threading.Lock()


def _metrics() -> _Metrics:
    """This process's metrics; made once, though the first requests arrive on many threads."""
    global _made
    if _made is None:
        with _made_lock:
            if _made is None:
                _made = _Metrics()
    return _made


P = ParamSpec("P")
_failed: set[str] = set()


def _never_raises(count: Callable[P, None]) -> Callable[P, None]:
    """Counting must never fail the work it counts (a payment above all): an error is logged,
    once per process and function, and the work goes on."""

    @functools.wraps(count)
    def counted(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            count(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any failure of the metrics' storage)
            if count.__name__ not in _failed:
                _failed.add(count.__name__)
                logger.warning("metrics: %s not counted error=%s: %s", count.__name__,
                               type(exc).__name__, exc)

    return counted


LABEL = re.compile(r"[^A-Za-z0-9._-]")


def _label(value: str) -> str:
    """A gateway-supplied value made fit for a label: its own few characters, bounded."""
    return LABEL.sub("_", value)[:64]


@_never_raises
def event_received(*, source: str, outcome: str) -> None:
    _metrics().child("events_received", source, outcome).inc()


@_never_raises
def notify_lag_observe(notify_time: str) -> None:
    """Alipay's `notify_time` is Beijing time, `yyyy-MM-dd HH:mm:ss`; unreadable is skipped."""
    try:
        sent = datetime.strptime(notify_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except (TypeError, ValueError):
        return
    # A second's resolution, and clocks differ a little: never below zero.
    _metrics().notify_lag.observe(max(0.0, (timezone.now() - sent).total_seconds()))


@_never_raises
def events_processed(*, source: str, outcome: str, count: int = 1) -> None:
    if count:
        _metrics().child("events_processed", source, outcome).inc(count)


@_never_raises
def paid_observe(*, link_started_at: datetime, applied_at: datetime) -> None:
    _metrics().time_to_paid.observe(max(0.0, (applied_at - link_started_at).total_seconds()))


@_never_raises
def event_applied_observe(*, source: str, received_at: datetime, applied_at: datetime) -> None:
    _metrics().child("event_to_applied", source).observe(
        max(0.0, (applied_at - received_at).total_seconds()))


@_never_raises
def reconcile_observe(*, counts: dict[str, int], seconds: float) -> None:
    for outcome, count in counts.items():
        _metrics().child("reconcile_checks", _label(outcome)).inc(count)
    _metrics().reconcile_duration.observe(seconds)


@_never_raises
def bill_observe(*, state: str, findings: dict[str, int], seconds: float) -> None:
    _metrics().child("bill_runs", state).inc()
    for outcome, count in findings.items():
        _metrics().child("bill_findings", outcome).inc(count)
    _metrics().bill_duration.observe(seconds)


@_never_raises
def refund_entered(state: str, count: int = 1) -> None:
    if count:
        _metrics().child("refunds", state).inc(count)


@_never_raises
def gateway_error(*, method: str, code: str, sub_code: str) -> None:
    _metrics().child("gateway_errors", method, _label(code) or "none",
                       _label(sub_code) or "none").inc()


@_never_raises
def gateway_observe(*, method: str, seconds: float) -> None:
    _metrics().child("gateway_duration", method).observe(seconds)


@_never_raises
def signature_verified(*, key_id: str, kind: str) -> None:
    _metrics().child("signatures_verified", _label(key_id), kind).inc()


@_never_raises
def certificate_downloaded(*, outcome: str) -> None:
    _metrics().child("certificate_downloads", outcome).inc()


@contextmanager
def gateway_timed(method: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        gateway_observe(method=method, seconds=time.perf_counter() - started)


def ledger_families() -> list[GaugeMetricFamily]:
    """Gauges read from the database at scrape time: two cheap indexed counts."""
    from payment.models import EventState, PaymentEvent, Refund

    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = '2s'")
        events = PaymentEvent.objects.filter(
            state__in=(EventState.RECEIVED, EventState.DEAD)
        ).aggregate(
            waiting=Count("id", filter=Q(state=EventState.RECEIVED)),
            dead=Count("id", filter=Q(state=EventState.DEAD)),
            oldest=Min("received_at", filter=Q(state=EventState.RECEIVED)),
        )
        refunds = dict(Refund.objects.order_by().values("state").annotate(n=Count("id"))
                       .values_list("state", "n"))
    waiting = GaugeMetricFamily("shop_payment_events_waiting",
                                "Payment events stored and not yet settled (state received)")
    waiting.add_metric([], events["waiting"])
    dead = GaugeMetricFamily("shop_payment_events_dead",
                             "Payment events given up on, waiting for an operator")
    dead.add_metric([], events["dead"])
    oldest = GaugeMetricFamily("shop_payment_events_oldest_waiting_seconds",
                               "Age of the oldest waiting payment event (0 when none)")
    age = (timezone.now() - events["oldest"]).total_seconds() if events["oldest"] else 0.0
    oldest.add_metric([], max(0.0, age))
    by_state = GaugeMetricFamily("shop_refunds_in_ledger",
                                 "Refunds in the ledger by state", labels=["state"])
    for state in Refund.State.values:
        by_state.add_metric([state], refunds.get(state, 0))
    return [waiting, dead, oldest, by_state]


def certificate_families() -> list[GaugeMetricFamily]:
    """Days until each certificate of certificate mode expires (none in key mode)."""
    from payment.gateway.report import certificates_report

    days = GaugeMetricFamily(
        "shop_alipay_certificate_days_left",
        "Days until a certificate expires (negative: expired), by role (app, alipay, root) "
        "and serial number; usable is 0 when it cannot be used (chain, key, dates)",
        labels=["role", "sn", "usable"])
    for info in certificates_report():
        days.add_metric([info.role, info.sn, "0" if info.problem else "1"],
                        round(info.days_left(), 2))
    return [days]
