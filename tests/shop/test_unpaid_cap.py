"""One account may hold only ORDER_MAX_UNPAID unpaid orders: stock cannot be hoarded unpaid."""
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment.reconciliation.expiry import order_expire, orders_expired
from shop.models import SKU, OrderInfo, User
from shop.services import OrderError, UnpaidOrdersLimitError, order_create
from tests.factories import UserFactory, signed_in, sku_create
from tests.support import ShopClient, query_params

pytestmark = pytest.mark.django_db(transaction=True)


def _place(shop: ShopClient, sku: SKU) -> Any:
    return shop.session.post(shop.url("/orders/"),
                             json={"items": [{"sku_id": sku.pk, "count": 1}]}, timeout=30)


def _unpaid(user: User) -> int:
    return OrderInfo.objects.filter(user=user, status=OrderInfo.Status.UNPAID).count()


def test_an_order_over_the_cap_gets_409_and_takes_no_stock(shop: ShopClient,
                                                           settings: Any) -> None:
    settings.ORDER_MAX_UNPAID = 3
    sku = sku_create(stock=100)
    hoarder = UserFactory()
    signed_in(shop, hoarder)
    for _ in range(3):
        assert _place(shop, sku).status_code == 201

    over = _place(shop, sku)

    assert over.status_code == 409, over.text
    message = over.json()["message"]
    assert "3 unpaid orders" in message and "Pay one of them" in message
    assert "30 minutes" in message
    assert _unpaid(hoarder) == 3
    assert SKU.objects.get(pk=sku.pk).stock == 97
    # Another account is not held back by this one's orders.
    neighbour = signed_in(ShopClient(shop.base_url), UserFactory())
    assert _place(neighbour, sku).status_code == 201


def test_paying_an_order_frees_a_slot(shop: ShopClient, sandbox: SandboxControl,
                                      celery_workers: Any, settings: Any) -> None:
    settings.ORDER_MAX_UNPAID = 2
    sandbox.set_faults(notify_drop=True)  # the buyer's return is what pays
    sku = sku_create(price="20.00", stock=100)
    payer = UserFactory()
    signed_in(shop, payer)
    first = _place(shop, sku).json()["order_id"]
    assert _place(shop, sku).status_code == 201
    assert _place(shop, sku).status_code == 409

    paid = sandbox.pay(shop.pay_link(first).json()["alipay_url"])
    assert shop.put_status(query_params(paid["return_url"])).status_code == 200

    assert OrderInfo.objects.get(order_id=first).status == OrderInfo.Status.UNSEND
    assert _place(shop, sku).status_code == 201
    assert _place(shop, sku).status_code == 409
    assert _unpaid(payer) == 2


def test_an_expired_order_frees_a_slot(shop: ShopClient, settings: Any) -> None:
    settings.ORDER_MAX_UNPAID = 1
    sku = sku_create(stock=10)
    forgetful = UserFactory()
    signed_in(shop, forgetful)
    stale = _place(shop, sku).json()["order_id"]
    assert _place(shop, sku).status_code == 409
    OrderInfo.objects.filter(order_id=stale).update(
        created_at=timezone.now() - timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS + 1))

    assert orders_expired(limit=10) == [stale]
    order_expire(order_id=stale)

    assert OrderInfo.objects.get(order_id=stale).status == OrderInfo.Status.CANCELED
    assert _place(shop, sku).status_code == 201
    assert _unpaid(forgetful) == 1


def test_zero_means_no_cap(shop: ShopClient, settings: Any) -> None:
    settings.ORDER_MAX_UNPAID = 0
    sku = sku_create(stock=100)
    wholesale = UserFactory()
    signed_in(shop, wholesale)

    assert [_place(shop, sku).status_code for _ in range(8)] == [201] * 8
    assert _unpaid(wholesale) == 8


def _place_at_once(user: User, sku: SKU, count: int) -> tuple[int, list[str]]:
    """`count` placements for one user, each on its own connection, released by one barrier."""
    barrier = threading.Barrier(count)
    placed: list[str] = []
    refused: list[str] = []

    def place() -> None:
        try:
            barrier.wait()
            placed.append(order_create(user=user, items=[(sku.pk, 1)]).order_id)
        except UnpaidOrdersLimitError as exc:
            refused.append(str(exc))
        except OrderError as exc:
            refused.append(f"unexpected: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=place) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return len(placed), refused


def test_parallel_orders_of_one_account_never_exceed_the_cap(settings: Any) -> None:
    assert connection.vendor == "postgresql"
    settings.ORDER_MAX_UNPAID = 3
    sku = sku_create(stock=1000)

    for _ in range(3):  # a few rounds: a race lost once would show in one of them
        user = UserFactory()

        placed, refused = _place_at_once(user, sku, 12)

        assert placed == 3, refused
        assert len(refused) == 9 and all("3 unpaid orders" in m for m in refused), refused
        assert _unpaid(user) == 3
    assert SKU.objects.get(pk=sku.pk).stock == 1000 - 3 * 3
