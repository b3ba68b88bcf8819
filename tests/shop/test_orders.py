"""The shop's API: registration, tokens, SKUs and orders with stock taken atomically."""
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from shop.models import SKU, OrderGoods, OrderInfo
from tests.factories import UserFactory, signed_in, sku_create
from tests.support import ShopClient

pytestmark = pytest.mark.django_db(transaction=True)


def test_register_login_and_order(web: str) -> None:
    keyboard = sku_create("Keyboard", "99.50", 10)
    cable = sku_create("Cable", "0.10", 10)
    shop = ShopClient(web).register_and_login("carol")

    order = shop.order([{"sku_id": keyboard.pk, "count": 2}, {"sku_id": cable.pk, "count": 3},
                        {"sku_id": keyboard.pk, "count": 1}])

    assert order["status"] == "UNPAID"
    assert Decimal(order["total_amount"]) == Decimal("298.80")
    assert order["order_id"].isdigit()
    stored = OrderInfo.objects.get(order_id=order["order_id"])
    assert stored.total_amount == Decimal("298.80")
    assert stored.order_id.endswith(f"{stored.user_id:09d}")
    assert {(g.sku_id, g.count) for g in OrderGoods.objects.filter(order=stored)} == {
        (keyboard.pk, 3), (cable.pk, 3)}
    assert SKU.objects.get(pk=keyboard.pk).stock == 7
    listed = shop.session.get(shop.url("/orders/")).json()
    assert [o["order_id"] for o in listed] == [order["order_id"]]
    detail = shop.session.get(shop.url(f"/orders/{order['order_id']}/")).json()
    assert len(detail["goods"]) == 2


def test_client_cannot_set_the_total(web: str) -> None:
    sku = sku_create("Monitor", "1899.00", 3)
    shop = signed_in(ShopClient(web), UserFactory())
    response = shop.session.post(
        shop.url("/orders/"),
        json={"items": [{"sku_id": sku.pk, "count": 1}], "total_amount": "0.01"},
    )
    assert response.status_code == 201
    assert Decimal(response.json()["total_amount"]) == Decimal("1899.00")


@pytest.mark.parametrize(
    "body",
    [{}, {"items": []}, {"items": [{"sku_id": 1, "count": 0}]},
     {"items": [{"sku_id": "x", "count": 1}]}, {"items": "nope"},
     {"items": [{"sku_id": 999999, "count": 1}]}],
)
def test_bad_order_input_gets_400(web: str, body: dict) -> None:
    sku_create()
    shop = signed_in(ShopClient(web), UserFactory())
    response = shop.session.post(shop.url("/orders/"), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["message"]
    assert not OrderInfo.objects.exists()


def test_stock_never_goes_below_zero_under_concurrent_orders(web: str) -> None:
    sku = sku_create("Last units", "5.00", 5)
    buyers = [signed_in(ShopClient(web), UserFactory()) for _ in range(12)]

    def place(shop: ShopClient) -> int:
        return shop.session.post(
            shop.url("/orders/"), json={"items": [{"sku_id": sku.pk, "count": 1}]}
        ).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(place, buyers))

    assert sorted(codes) == [201] * 5 + [400] * 7
    assert SKU.objects.get(pk=sku.pk).stock == 0
    assert OrderInfo.objects.count() == 5


def test_orders_of_others_are_invisible(web: str) -> None:
    sku = sku_create()
    owner = signed_in(ShopClient(web), UserFactory())
    other = signed_in(ShopClient(web), UserFactory())
    order_id = owner.order([{"sku_id": sku.pk, "count": 1}])["order_id"]

    assert other.session.get(other.url("/orders/")).json() == []
    assert other.session.get(other.url(f"/orders/{order_id}/")).status_code == 404
    assert other.session.get(other.url(f"/orders/{order_id}/payment/status/")).status_code == 404


def test_pay_link_same_400_for_missing_foreign_and_paid(web: str, alipay_settings: dict) -> None:
    sku = sku_create()
    owner = signed_in(ShopClient(web), UserFactory())
    other = signed_in(ShopClient(web), UserFactory())
    order_id = owner.order([{"sku_id": sku.pk, "count": 1}])["order_id"]
    paid_id = owner.order([{"sku_id": sku.pk, "count": 1}])["order_id"]
    OrderInfo.objects.filter(order_id=paid_id).update(status=OrderInfo.Status.UNSEND)

    foreign = other.pay_link(order_id)
    missing = owner.pay_link("20990101000000000000000000001")
    paid = owner.pay_link(paid_id)

    assert foreign.status_code == missing.status_code == paid.status_code == 400
    assert foreign.json() == missing.json() == paid.json()
    own = owner.pay_link(order_id)
    assert own.status_code == 200
    assert own.json()["alipay_url"].startswith(alipay_settings["ALIPAY_GATEWAY"] + "?")


def test_anonymous_requests_are_refused(web: str) -> None:
    assert requests.get(f"{web}/orders/", timeout=10).status_code == 401
    assert requests.get(f"{web}/orders/1/payment/", timeout=10).status_code == 401
    assert requests.get(f"{web}/skus/", timeout=10).status_code == 200


def test_wrong_password_gets_400(web: str) -> None:
    UserFactory(username="dave")
    response = requests.post(
        f"{web}/authorizations/", json={"username": "dave", "password": "nope"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["message"]


def test_duplicate_username_and_weak_password_get_400(web: str) -> None:
    UserFactory(username="frank")
    again = requests.post(
        f"{web}/users/", json={"username": "frank", "password": "another-pass-1"}, timeout=10
    )
    weak = requests.post(f"{web}/users/", json={"username": "gina", "password": "x"}, timeout=10)
    assert again.status_code == weak.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/orders/", {"data": "[" * 100_000,
                              "headers": {"Content-Type": "application/json"}}),
        ("get", "/orders/%00/", {}),
        ("get", "/orders/%00/payment/", {}),
        ("get", "/orders/%00/payment/status/", {}),
        ("put", "/payment/status/", {"data": '{"sign": "\\ud800", "out_trade_no": "1"}',
                                     "headers": {"Content-Type": "application/json"}}),
    ],
    ids=["nested-json-order", "nul-order", "nul-pay-link", "nul-status", "lone-surrogate"],
)
def test_hostile_input_gets_a_4xx_not_a_500(web: str, method: str, path: str,
                                           kwargs: dict) -> None:
    shop = signed_in(ShopClient(web), UserFactory())
    response = shop.session.request(method, shop.url(path), timeout=30, **kwargs)
    assert 400 <= response.status_code < 500, response.text[:300]


def test_fullwidth_name_of_an_existing_user_is_refused(web: str) -> None:
    UserFactory(username="dora")
    response = requests.post(f"{web}/users/", json={"username": "ｄｏｒａ",
                                                    "password": "s3cret-pass"}, timeout=10)
    assert response.status_code == 400, response.text
    assert "taken" in response.json()["message"]
