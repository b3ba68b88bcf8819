"""Reconciliation and expiry with real workers, beat and the sandbox: what pays or closes an
order when the return and the notification do not (the intake's own contract is in
tests/payment/intake/)."""
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment.links import payment_link_create
from payment.models import Payment, PaymentEvent, Refund
from shop.models import SKU, OrderInfo
from tests.factories import (
    UserFactory,
    order_with_goods,
    order_with_link,
    orders_with_links,
    sku_create,
)
from tests.support import ShopClient, query_params, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers", "celery_beat"),
]


def _order_with_link(**fields: Any) -> tuple[str, str]:
    """An UNPAID order of 66.60 and its pay link."""
    order, url = order_with_link(total_amount=Decimal("66.60"), **fields)
    return order.order_id, url


def _order_status(order_id: str) -> int:
    return OrderInfo.objects.get(order_id=order_id).status


def _paid(order_id: str) -> bool:
    return _order_status(order_id) == OrderInfo.Status.UNSEND


def test_reconciliation_alone_pays_when_return_and_notification_are_lost(
    web: str, sandbox: SandboxControl, fast_schedule: dict
) -> None:
    sandbox.set_faults(drop_return=True, notify_drop=True)
    order_id, url = _order_with_link()
    sandbox.pay(url)
    started = timezone.now()

    # One reconciliation interval after RECONCILE_AFTER_SECONDS, plus time to do the work.
    limit = (fast_schedule["RECONCILE_AFTER_SECONDS"] + fast_schedule["RECONCILE_INTERVAL_SECONDS"]
             + 8)
    wait_for(lambda: _paid(order_id), limit)

    after = fast_schedule["RECONCILE_AFTER_SECONDS"]
    assert timezone.now() - started >= timedelta(seconds=after - 1)
    payment = Payment.objects.get(order_id=order_id)
    assert payment.source == "query"
    assert not PaymentEvent.objects.filter(order_id=order_id, source="notify").exists()


def test_return_notification_and_reconciliation_together_pay_once(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_duplicate=12)
    order_id, url = _order_with_link()
    paid = sandbox.pay(url)
    params = query_params(paid["return_url"])

    with ThreadPoolExecutor(16) as pool:
        puts = [pool.submit(shop.put_status, params) for _ in range(24)]
        reconciles = [pool.submit(call_command, "reconcile_payments") for _ in range(3)]
        for future in reconciles:
            future.result()
        codes = {future.result().status_code for future in puts}

    assert codes <= {200, 202}
    wait_for(lambda: _paid(order_id), 20)
    wait_for(lambda: len(sandbox.notifications(out_trade_no=order_id)[0]["attempts"]) >= 13, 20)
    assert Payment.objects.filter(order_id=order_id).count() == 1
    assert Payment.objects.get(order_id=order_id).status == Payment.Status.APPLIED
    notify = PaymentEvent.objects.get(order_id=order_id, source="notify")
    assert notify.deliveries >= 13
    assert not PaymentEvent.objects.filter(
        order_id=order_id, state=PaymentEvent.State.REJECTED).exists()


def _expire_now(order_id: str) -> None:
    OrderInfo.objects.filter(order_id=order_id).update(
        created_at=timezone.now() - timedelta(hours=1)
    )


def test_expired_order_is_closed_at_alipay_canceled_and_restocked(
    web: str, sandbox: SandboxControl
) -> None:
    order = order_with_goods([(sku_create(price="66.60", stock=10), 1)])
    order_id, url = order.order_id, payment_link_create(user=order.user, order_id=order.order_id)
    sku_id = OrderInfo.objects.get(order_id=order_id).goods.get().sku_id
    requests.get(url, timeout=10)  # the buyer opened the cashier: the trade exists, unpaid
    assert SKU.objects.get(pk=sku_id).stock == 9

    _expire_now(order_id)

    wait_for(lambda: _order_status(order_id) == OrderInfo.Status.CANCELED, 20)
    assert SKU.objects.get(pk=sku_id).stock == 10
    assert sandbox.trade(order_id)["status"] == "TRADE_CLOSED"
    assert PaymentEvent.objects.filter(order_id=order_id, source="expiry").exists()


def test_payment_for_a_canceled_order_is_refunded(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id, url = _order_with_link()
    _expire_now(order_id)
    wait_for(lambda: _order_status(order_id) == OrderInfo.Status.CANCELED, 20)

    paid = sandbox.pay(url)  # the buyer pays in a tab left open

    wait_for(lambda: Payment.objects.filter(
        order_id=order_id, status=Payment.Status.REFUNDED).exists(), 30)
    assert _order_status(order_id) == OrderInfo.Status.CANCELED
    payment = Payment.objects.get(order_id=order_id)
    assert payment.trade_id == paid["trade_no"]
    trade = sandbox.trade(order_id)
    assert trade["status"] == "TRADE_CLOSED"
    assert trade["refund_fee"] in ("66.60", 66.6)
    # The buyer's return page learns the order was closed and the money is on its way back.
    late_return = shop.put_status(query_params(paid["return_url"]))
    assert late_return.status_code == 409, late_return.text
    assert late_return.json()["refund"] == "refunded"
    assert Payment.objects.filter(order_id=order_id).count() == 1
    # The refund is the ledger's: the whole late payment, sent once under one number.
    refund = Refund.objects.get(order_id=order_id)
    assert (refund.source, refund.state, refund.amount, refund.payment_id) == (
        Refund.Source.LATE_PAYMENT, Refund.State.SUCCEEDED, payment.amount, payment.pk)
    assert [r["out_request_no"] for r in trade["refunds"]] == [refund.out_request_no]
    assert payment.refund_request_no == refund.out_request_no


def test_expiry_racing_late_payments_never_keeps_the_money(
    web: str, sandbox: SandboxControl
) -> None:
    buyer = UserFactory()  # one buyer holds all twelve unpaid orders
    orders = [_order_with_link(user=buyer)] + [
        (order.order_id, url)
        for order, url in orders_with_links(11, user=buyer, total_amount=Decimal("12.00"))]

    def pay(url: str) -> None:
        try:
            sandbox.pay(url)
        except Exception:  # noqa: BLE001  (a closed trade refuses payment: that is a fine end)
            pass

    with ThreadPoolExecutor(12) as pool:
        for index, (order_id, url) in enumerate(orders):
            if index % 2:
                _expire_now(order_id)
                pool.submit(pay, url)
            else:
                pool.submit(pay, url)
                _expire_now(order_id)

    def settled() -> bool:
        return all(
            _order_status(o) != OrderInfo.Status.UNPAID
            and not Payment.objects.filter(order_id=o, status="refund_pending").exists()
            for o, _ in orders
        )

    wait_for(settled, 60, 0.3)
    for order_id, _ in orders:
        status = _order_status(order_id)
        trade = sandbox.trade(order_id) if _trade_exists(sandbox, order_id) else None
        money_kept = trade is not None and trade["status"] in ("TRADE_SUCCESS",
                                                                     "TRADE_FINISHED")
        if status == OrderInfo.Status.CANCELED:
            assert not money_kept, (order_id, trade)
            assert not Payment.objects.filter(order_id=order_id, status="applied").exists()
        else:
            assert status == OrderInfo.Status.UNSEND
            assert money_kept
            assert Payment.objects.get(order_id=order_id, status="applied")


def _trade_exists(sandbox: SandboxControl, order_id: str) -> bool:
    try:
        sandbox.trade(order_id)
    except Exception:  # noqa: BLE001
        return False
    return True
