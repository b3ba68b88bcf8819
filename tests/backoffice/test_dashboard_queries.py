"""The dashboard's figures, counted by PostgreSQL from rows placed at known times."""
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backoffice.dashboard import queries
from payment.models import Payment, PaymentEvent, Refund
from tests.factories import (
    attempt_checked_create,
    bill_report_create,
    event_create,
    paid_order_create,
    refund_create,
)

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)


@pytest.fixture
def window() -> queries.Window:
    return queries.dashboard_window()


def test_window_is_the_24_hours_ending_with_the_current_hour() -> None:
    now = timezone.now()
    window = queries.dashboard_window(now=now)
    assert window.end - window.start == 24 * H
    assert window.start < now - 23 * H and now < window.end <= now + H
    local_end = timezone.localtime(window.end)
    assert (local_end.minute, local_end.second, local_end.microsecond) == (0, 0, 0)
    assert len(window.buckets(M)) == 1440 and len(window.buckets(H)) == 24
    assert window.buckets(H)[0] == window.start and window.buckets(H)[-1] == window.end - H


def test_payments_are_counted_per_minute_by_source(window: queries.Window) -> None:
    start = window.start
    for _ in range(2):
        paid_order_create(source="notify", paid_at=start + 5 * M + 10 * S)
    paid_order_create(source="notify", paid_at=start + 10 * H + 59 * S,
                      status=Payment.Status.REFUND_PENDING)  # late, still money that arrived
    paid_order_create(source="return", paid_at=start + 3 * H + 7 * M)
    paid_order_create(source="query", paid_at=start + 23 * H + 59 * M + 59 * S)
    paid_order_create(source="notify", paid_at=start - S)  # before the window
    paid_order_create(source="notify", paid_at=window.end)  # after it

    counts = queries.payments_by_source(window=window)

    assert len(counts.buckets) == 1440
    by_source = {s.key: s.values for s in counts.series}
    assert by_source["notify"][5] == 2 and by_source["notify"][600] == 1
    assert by_source["return"][187] == 1
    assert by_source["query"][1439] == 1
    assert counts.totals() == {"return": 1, "notify": 3, "query": 1, "expiry": 0, "cancel": 0,
                               "operator": 0, "bill": 0}
    assert counts.total == 5


def _paid_after(seconds: float, hour: int, window: queries.Window, **kwargs: object) -> None:
    paid_at = window.start + hour * H + 30 * M
    paid_order_create(paid_at=paid_at, link_at=paid_at - timedelta(seconds=seconds),
                      **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("in_database", [True, False], ids=["percentile_cont", "python"])
def test_time_to_paid_percentiles_per_hour_and_overall(
    window: queries.Window, in_database: bool
) -> None:
    for seconds in (10, 20, 30, 40, 100):
        _paid_after(seconds, 2, window)
    for seconds in (60, 120):
        _paid_after(seconds, 5, window)
    # Not counted: a late payment (refunded, not paying), one without a pay link, one outside.
    _paid_after(5000, 5, window, status=Payment.Status.REFUND_PENDING)
    paid_order_create(source="bill", paid_at=window.start + 5 * H)
    paid_order_create(paid_at=window.start - H, link_at=window.start - 2 * H)

    took = queries.time_to_paid(window=window, in_database=in_database)

    assert took.counts[2] == 5 and took.counts[5] == 2 and sum(took.counts) == 7
    # percentile_cont: linear interpolation at fraction * (n - 1)
    assert took.p50[2] == pytest.approx(30) and took.p95[2] == pytest.approx(88)
    assert took.p50[5] == pytest.approx(90) and took.p95[5] == pytest.approx(117)
    assert took.p50[0] is None and took.p95[23] is None
    assert took.count == 7
    assert took.overall_p50 == pytest.approx(40) and took.overall_p95 == pytest.approx(114)


def test_time_to_paid_in_postgresql_is_one_query_per_hour_and_overall(
    window: queries.Window
) -> None:
    for seconds in (10, 20):
        _paid_after(seconds, 1, window)
    with CaptureQueriesContext(connection) as captured:
        took = queries.time_to_paid(window=window)
    assert len(captured) == 1
    assert "PERCENTILE_CONT(0.95) WITHIN GROUP" in captured[0]["sql"]
    assert "ROLLUP" in captured[0]["sql"]
    assert (took.count, took.counts[1], took.overall_p50) == (2, 2, pytest.approx(15))


def test_events_per_hour_by_state_and_the_ones_waiting_or_dead_now(
    window: queries.Window
) -> None:
    start = window.start
    for _ in range(3):
        event_create(state="applied", received_at=start + H + 2 * M)
    for _ in range(2):
        event_create(state="rejected", received_at=start + 4 * H)
    event_create(state="dead", received_at=start + 4 * H + 59 * M)
    event_create(state="received", received_at=start + 23 * H)
    old_waiting = event_create(state="received", received_at=start - 3 * H)
    event_create(state="dead", received_at=start - 30 * H)

    counts = queries.events_by_state(window=window)
    now = queries.events_now()

    by_state = {s.key: s.values for s in counts.series}
    assert by_state["applied"][1] == 3 and by_state["rejected"][4] == 2
    assert by_state["dead"][4] == 1 and by_state["received"][23] == 1
    assert counts.totals() == {"received": 1, "applied": 3, "recorded": 0, "rejected": 2,
                               "dead": 1}
    assert (now.waiting, now.dead) == (2, 2)
    assert now.oldest_waiting == old_waiting.received_at


def test_reconciliation_checks_by_what_they_found(window: queries.Window) -> None:
    at = window.start + 7 * H
    for result in ("applied", "stored", "WAIT_BUYER_PAY", "TRADE_NOT_EXIST",
                   "error: alipay.trade.query: 20000 isp.unknow-error", "rejected", "settled",
                   "something new"):
        attempt_checked_create(result=result, checked_at=at)
    attempt_checked_create(result="applied", checked_at=window.start - M)

    counts = queries.reconciliation_checks(window=window)

    assert counts.totals() == {"paid": 2, "unpaid": 2, "mismatch": 1, "settled": 1,
                               "error": 1, "other": 1}
    assert all(s.values[7] == s.total for s in counts.series)


def test_bill_days_are_the_seven_days_before_today_oldest_first() -> None:
    today = date(2026, 11, 26)
    for back in (0, 3, 8):  # today's bill cannot exist yet; eight days back is too old
        bill_report_create(day=today - timedelta(days=back), findings={"missing_here": 9})
    bill_report_create(day=today - timedelta(days=1),
                       findings={"missing_here": 2, "amount_mismatch": 1}, matched=40)
    balanced = bill_report_create(day=today - timedelta(days=7), findings={}, matched=3)

    days = queries.bill_days(today=today)

    assert [d.bill_date for d in days] == [today - timedelta(days=n) for n in range(7, 0, -1)]
    assert days[-1].findings == {"missing_here": 2, "missing_at_alipay": 0,
                                 "amount_mismatch": 1, "refund_mismatch": 0}
    assert (days[-1].total, days[-1].matched, days[-1].state) == (3, 40, "done")
    assert (days[0].report_id, days[0].total, days[0].matched) == (balanced.pk, 0, 3)
    assert days[4].total == 9  # three days back
    assert [d.report_id is None for d in days] == [False, True, True, True, False, True, False]
    assert days[1].state == "" and days[1].total == 0


def test_gateway_errors_from_events_checks_and_refunds(window: queries.Window) -> None:
    at = window.start + 12 * H
    event_create(state="dead", received_at=at,
                 last_error="GatewayUnavailable: alipay.trade.query: 20000 isp.unknow-error")
    event_create(state="applied", received_at=at, last_error="GatewayRejected: 40004 x")
    # Not a gateway error: Alipay answered that the trade is not paid yet.
    event_create(state="received", received_at=at, last_error="PaymentNotConfirmed: unpaid")
    event_create(state="applied", received_at=at)
    attempt_checked_create(result="error: alipay.trade.query: URLError", checked_at=at)
    attempt_checked_create(result="WAIT_BUYER_PAY", checked_at=at)
    payment = paid_order_create(paid_at=at, amount="50.00")
    refund_create(payment=payment, state="failed", requested_at=at,
                  last_error="40004 ACQ.TRADE_HAS_CLOSE")
    refund_create(payment=payment, state="succeeded", requested_at=at)

    counts = queries.gateway_errors(window=window)

    assert counts.totals() == {"events": 2, "reconciliation": 1, "refunds": 1}
    assert [s.values[12] for s in counts.series] == [2, 1, 1]
    assert counts.total == 4


def test_refunds_by_state_open_ones_and_the_amount_refunded(window: queries.Window) -> None:
    payment = paid_order_create(paid_at=window.start, amount="100.00")
    at = window.start + 20 * H
    refund_create(payment=payment, state="succeeded", requested_at=at, amount="12.50")
    refund_create(payment=payment, state="succeeded", requested_at=at + M, amount="7.25")
    refund_create(payment=payment, state="failed", requested_at=at, last_error="refused")
    refund_create(payment=payment, state="sent", requested_at=at)
    refund_create(payment=payment, state="unknown", requested_at=window.start - 2 * H)
    refund_create(payment=payment, state="succeeded", requested_at=window.start - H,
                  amount="30.00")

    counts = queries.refunds_by_state(window=window)
    now = queries.refunds_now(window=window)

    assert counts.totals() == {"requested": 0, "sent": 1, "unknown": 0, "succeeded": 2,
                               "failed": 1}
    assert {s.key: s.values[20] for s in counts.series}["succeeded"] == 2
    assert now.open_by_state == {"requested": 0, "sent": 1, "unknown": 1}
    assert now.succeeded_amount == Decimal("19.75")
    assert Refund.objects.count() == 6 and PaymentEvent.objects.count() == 0
