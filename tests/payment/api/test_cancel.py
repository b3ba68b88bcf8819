"""The buyer cancels an unpaid order: its trade is closed at Alipay first, the stock comes back
and the unpaid-order cap frees; an order Alipay says is paid ends paid, never canceled."""
from typing import Any

import pytest
import requests
from django.test import Client

from alipay_sandbox.client import SandboxControl
from payment import gateway
from payment.links import payment_link_create
from payment.models import Payment, PaymentEvent
from payment.reconciliation import expiry
from shop.models import SKU, OrderInfo, User
from shop.services import token_create
from tests.factories import PaymentFactory, UserFactory, order_with_goods, signed_in, sku_create
from tests.support import ShopClient


def _auth(user: User) -> dict[str, str]:
    _, token = token_create(user=user)
    return {"HTTP_AUTHORIZATION": f"Token {token}"}


def _cancel(client: Client, user: User, order_id: str) -> Any:
    return client.post(f"/orders/{order_id}/cancel/", **_auth(user))


@pytest.mark.django_db
def test_an_unpaid_order_without_a_pay_link_cancels_without_asking_alipay(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(**kwargs: Any) -> None:
        raise AssertionError("Alipay asked about an order it never had")

    monkeypatch.setattr(gateway, "trade_close", never)
    monkeypatch.setattr(gateway, "trade_query", never)
    sku = sku_create(stock=10)
    order = order_with_goods([(sku, 3)])

    response = _cancel(client, order.user, order.order_id)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["order_id"] == order.order_id and body["status"] == "CANCELED"
    assert [line["count"] for line in body["goods"]] == [3]
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.CANCELED
    assert SKU.objects.get(pk=sku.pk).stock == 10
    event = PaymentEvent.objects.get(order_id=order.order_id)
    assert (event.source, event.state, event.reason) == (
        PaymentEvent.Source.CANCEL, PaymentEvent.State.RECORDED, expiry.BUYER_CANCELED.reason)
    status = client.get(f"/orders/{order.order_id}/payment/status/", **_auth(order.user)).json()
    assert (status["canceled_by"], status["cancel_reason"]) == (
        "buyer", expiry.BUYER_CANCELED.reason)
    assert status["canceled_at"].endswith("Z")

    again = _cancel(client, order.user, order.order_id)
    assert again.status_code == 409
    assert again.json()["message"] == "This order is already canceled."
    assert SKU.objects.get(pk=sku.pk).stock == 10  # returned once


@pytest.mark.django_db
def test_someone_elses_or_an_unknown_order_is_404(client: Client) -> None:
    order = order_with_goods([(sku_create(stock=5), 1)])
    stranger = UserFactory()

    for order_id in (order.order_id, "20990101000000000000000000001"):
        response = _cancel(client, stranger, order_id)
        assert response.status_code == 404
        assert response.json() == {"message": "Order not found."}
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID


@pytest.mark.django_db
def test_cancel_needs_a_signed_in_buyer(client: Client) -> None:
    order = order_with_goods([(sku_create(stock=5), 1)])

    response = client.post(f"/orders/{order.order_id}/cancel/")

    assert response.status_code in (401, 403)
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID


@pytest.mark.django_db
def test_a_paid_order_is_409_and_stays_paid(client: Client) -> None:
    payment = PaymentFactory()

    response = _cancel(client, payment.order.user, payment.order_id)

    assert response.status_code == 409
    assert "paid" in response.json()["message"]
    assert OrderInfo.objects.get(pk=payment.order_id).status == OrderInfo.Status.UNSEND


@pytest.mark.django_db
@pytest.mark.parametrize("error", [
    gateway.GatewayUnavailable("alipay.trade.close: transport", code="transport"),
    gateway.GatewayRejected("40004", "ACQ.SELLER_BALANCE_NOT_ENOUGH"),
])
def test_alipay_away_is_503_and_the_order_stays_unpaid(
    client: Client, monkeypatch: pytest.MonkeyPatch, alipay_settings: Any, error: Exception
) -> None:
    def away(**kwargs: Any) -> bool:
        raise error

    sku = sku_create(stock=10)
    order = order_with_goods([(sku, 2)])
    payment_link_create(user=order.user, order_id=order.order_id)
    monkeypatch.setattr(gateway, "trade_close", away)

    response = _cancel(client, order.user, order.order_id)

    assert response.status_code == 503
    assert "try again" in response.json()["message"]
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID
    assert SKU.objects.get(pk=sku.pk).stock == 8
    assert not PaymentEvent.objects.filter(order_id=order.order_id).exists()


# -- against the sandbox -------------------------------------------------------------------


def _post_cancel(shop: ShopClient, order_id: str) -> requests.Response:
    return shop.session.post(shop.url(f"/orders/{order_id}/cancel/"), timeout=30)


@pytest.mark.django_db(transaction=True)
def test_cancel_closes_the_trade_returns_the_stock_and_frees_the_cap(
    shop: ShopClient, sandbox: SandboxControl, settings: Any
) -> None:
    settings.ORDER_MAX_UNPAID = 1
    sku = sku_create(price="12.30", stock=10)
    buyer = UserFactory()
    signed_in(shop, buyer)
    order_id = shop.order([{"sku_id": sku.pk, "count": 2}])["order_id"]
    url = shop.pay_link(order_id).json()["alipay_url"]
    requests.get(url, timeout=10)  # the buyer opened the cashier: the trade exists, unpaid
    assert sandbox.trade(order_id)["status"] == "WAIT_BUYER_PAY"
    full = shop.session.post(shop.url("/orders/"),
                             json={"items": [{"sku_id": sku.pk, "count": 1}]}, timeout=10)
    assert full.status_code == 409  # the cap: one unpaid order

    response = _post_cancel(shop, order_id)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELED"
    assert sandbox.trade(order_id)["status"] == "TRADE_CLOSED"
    assert SKU.objects.get(pk=sku.pk).stock == 10
    assert PaymentEvent.objects.filter(order_id=order_id, source="cancel").count() == 1
    assert shop.session.post(shop.url("/orders/"), json={"items": [{"sku_id": sku.pk,
                                                                    "count": 1}]},
                             timeout=10).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_cancel_racing_a_payment_ends_paid_never_canceled(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    sku = sku_create(price="45.00", stock=10)
    order = order_with_goods([(sku, 1)])
    url = payment_link_create(user=order.user, order_id=order.order_id)
    signed_in(shop, order.user)
    sandbox.set_faults(notify_drop=True)
    paid = sandbox.pay(url)  # paid at Alipay; the shop has not heard of it yet
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID

    response = _post_cancel(shop, order.order_id)

    assert response.status_code == 409, response.text
    assert "was paid" in response.json()["message"]
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNSEND
    payments = list(Payment.objects.filter(order_id=order.order_id))
    assert [(p.trade_id, p.status) for p in payments] == [(paid["trade_no"],
                                                           Payment.Status.APPLIED)]
    assert not PaymentEvent.objects.filter(order_id=order.order_id, source="cancel").exists()
    assert SKU.objects.get(pk=sku.pk).stock == 9
    assert sandbox.trade(order.order_id)["status"] == "TRADE_SUCCESS"
