"""Reconciliation against Alipay's daily trade bill, with the sandbox's real bill (a zip of GBK
CSV), real workers and PostgreSQL."""
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment import gateway
from payment.models import BillFinding, BillReport, Payment, PaymentEvent
from payment.reconciliation import bills
from shop.models import OrderInfo
from tests.factories import PaymentFactory, orders_with_links
from tests.support import wait_for

# The web receives the sandbox's notifications; the workers apply them; no beat, so that
# reconciliation cannot find the payment the test removes before the bill does.
pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("celery_workers", "web", "beat_paused")]

Outcome = BillFinding.Outcome
PRICE = Decimal("9.90")


def _pay_all(sandbox: SandboxControl, count: int) -> list[OrderInfo]:
    links = orders_with_links(count, total_amount=PRICE)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda link: sandbox.pay(link[1]), links))
    ids = [order.order_id for order, _ in links]
    wait_for(lambda: Payment.objects.filter(order_id__in=ids).count() == len(ids), 60)
    return [order for order, _ in links]


def test_a_day_is_reconciled_against_the_bill_and_a_rerun_changes_nothing(
    sandbox: SandboxControl,
) -> None:
    sandbox.set_settings(refund_window_s=10**9)  # no TRADE_FINISHED when the clock moves on
    orders = _pay_all(sandbox, 200)
    today = timezone.now().astimezone(gateway.BEIJING).date()
    sandbox.set_settings(clock_offset_s=86400)  # at Alipay it is tomorrow: today's bill is out

    # Our books drift from Alipay's in three ways.
    lost = Payment.objects.get(order=orders[0])
    lost_trade_no = lost.trade_id
    lost.delete()
    OrderInfo.objects.filter(pk=orders[0].pk).update(status=OrderInfo.Status.UNPAID)
    changed = Payment.objects.get(order=orders[1])
    Payment.objects.filter(pk=changed.pk).update(amount=Decimal("8.80"))
    PaymentFactory(order__total_amount=PRICE, trade_id="2026010122001499999999999999")

    first = bills.bill_reconcile(day=today)

    report = BillReport.objects.get(bill_date=today)
    assert report.state == BillReport.State.DONE
    assert (report.alipay_trades, report.alipay_trade_amount) == (200, PRICE * 200)
    assert report.our_trades == 200  # 199 real, 1 phantom; one lost
    assert report.matched == 198
    findings = {(f.outcome, f.trade_no) for f in report.finding_rows.all()}
    assert findings == {
        (Outcome.MISSING_HERE, lost_trade_no),
        (Outcome.AMOUNT_MISMATCH, changed.trade_id),
        (Outcome.MISSING_AT_ALIPAY, "2026010122001499999999999999"),
    }
    mismatch = report.finding_rows.get(outcome=Outcome.AMOUNT_MISMATCH)
    assert (mismatch.alipay_amount, mismatch.our_amount) == (PRICE, Decimal("8.80"))
    # The payment missing here was confirmed with Alipay and applied, with source "bill".
    assert first.applied == 1
    restored = Payment.objects.get(trade_id=lost_trade_no)
    assert (restored.order_id, restored.source, restored.amount) == (
        orders[0].order_id, "bill", PRICE)
    assert OrderInfo.objects.get(pk=orders[0].pk).status == OrderInfo.Status.UNSEND

    payments = Payment.objects.count()
    events = PaymentEvent.objects.count()
    call_command("reconcile_bill", "--date", today.isoformat())  # the rerun, as an operator

    again = BillReport.objects.get(bill_date=today)
    assert again.runs == 2
    assert {(f.outcome, f.trade_no) for f in again.finding_rows.all()} == findings
    assert (Payment.objects.count(), PaymentEvent.objects.count()) == (payments, events)
    assert again.finding_rows.get(outcome=Outcome.MISSING_HERE).note.startswith(
        "applied from the bill")


def test_a_day_without_a_bill_reports_what_we_hold(sandbox: SandboxControl) -> None:
    yesterday = timezone.now().astimezone(gateway.BEIJING).date() - timezone.timedelta(days=1)

    result = bills.bill_reconcile(day=yesterday)

    assert result.report.state == BillReport.State.NO_BILL
    assert (result.report.alipay_trades, result.report.findings) == (0, 0)
