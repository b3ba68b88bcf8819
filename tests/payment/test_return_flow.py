"""The return redirect: PUT /payment/status/ verified and applied by real Celery workers."""
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentEvent, RefusedRequest
from shop.models import OrderInfo
from tests.factories import OrderFactory, order_with_link, signed_in
from tests.support import SELLER_ID, ShopClient, query_params, sign_params, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_workers")]


def _paid_order(shop: ShopClient, sandbox: SandboxControl) -> tuple[str, dict]:
    """An order of 257.60 its buyer paid at the sandbox; `shop` is signed in as the buyer."""
    order, url = order_with_link(total_amount=Decimal("257.60"))
    signed_in(shop, order.user)
    paid = sandbox.pay(url)
    return order.order_id, query_params(paid["return_url"])


def test_return_params_pay_the_order(shop: ShopClient, sandbox: SandboxControl) -> None:
    sandbox.set_faults(notify_drop=True)  # the return is what pays
    order_id, params = _paid_order(shop, sandbox)
    assert Decimal(params["total_amount"]) == Decimal("257.60")

    response = shop.put_status(params)

    assert response.status_code == 200, response.text
    assert response.json() == {"trade_id": params["trade_no"]}
    order = OrderInfo.objects.get(order_id=order_id)
    assert order.status == OrderInfo.Status.UNSEND
    payment = Payment.objects.get(order=order)
    assert (payment.trade_id, payment.amount) == (params["trade_no"], Decimal("257.60"))
    event = PaymentEvent.objects.get(order=order, source=PaymentEvent.Source.RETURN)
    assert event.state == PaymentEvent.State.APPLIED
    assert event.raw_data["sign"] == params["sign"]
    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/")).json()
    assert status["status"] == "UNSEND" and status["trade_id"] == params["trade_no"]


def test_reloading_the_success_page_answers_the_trade_again(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id, params = _paid_order(shop, sandbox)
    first = shop.put_status(params)
    again = shop.put_status(params)
    as_post = shop.session.post(shop.url("/payment/status/"), data=params, timeout=30)

    assert [r.status_code for r in (first, again, as_post)] == [200, 200, 200]
    assert {r.json()["trade_id"] for r in (first, again, as_post)} == {params["trade_no"]}
    assert Payment.objects.filter(order_id=order_id).count() == 1


def test_same_return_put_20_times_concurrently_pays_once(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_drop=True)  # the returns are what pays
    order_id, params = _paid_order(shop, sandbox)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: shop.put_status(params), range(20)))

    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert {r.json()["trade_id"] for r in responses} == {params["trade_no"]}
    assert Payment.objects.filter(order_id=order_id).count() == 1
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNSEND
    event = PaymentEvent.objects.get(order_id=order_id, source=PaymentEvent.Source.RETURN)
    # Deliveries that raced the first one are counted on the event; later ones were answered
    # from the payment without a write.
    assert 1 <= event.deliveries <= 20


def _unpaid_order(shop: ShopClient) -> str:
    """An order of 10.00 with its pay link; `shop` is signed in as its buyer."""
    order, _ = order_with_link(total_amount=Decimal("10.00"))
    signed_in(shop, order.user)
    return order.order_id


def _forged_return(order_id: str, key: Path, **changes: str) -> dict[str, str]:
    params = {
        "charset": "utf-8", "out_trade_no": order_id, "method": "alipay.trade.page.pay.return",
        "total_amount": "10.00", "trade_no": "2026112522001400000000000001",
        "auth_app_id": "2021000000000001", "version": "1.0", "app_id": "2021000000000001",
        "seller_id": SELLER_ID, "timestamp": "2026-11-25 20:00:00",
    }
    params.update(changes)
    return sign_params(params, key.read_bytes())


def _assert_rejected(shop: ShopClient, order_id: str, params: dict[str, str], why: str) -> None:
    response = shop.put_status(params)
    assert response.status_code == 403, response.text
    assert "message" in response.json()
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNPAID
    assert not Payment.objects.filter(order_id=order_id).exists()
    event = PaymentEvent.objects.filter(source=PaymentEvent.Source.RETURN).latest("id")
    assert event.state == PaymentEvent.State.REJECTED
    assert why in event.reason


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"total_amount": "0.01"}, "total_amount"),
        ({"app_id": "2021999999999999"}, "app_id"),
        ({"seller_id": "2088999999999999"}, "seller_id"),
        ({"out_trade_no": "20990101000000000000000000001"}, "out_trade_no"),
        ({"method": "alipay.trade.page.pay"}, "not a return"),
    ],
    ids=["wrong-amount", "wrong-app-id", "wrong-seller", "unknown-order", "not-a-return"],
)
def test_signed_but_wrong_return_is_rejected(
    shop: ShopClient, dev_keys: Path, changes: dict[str, str], why: str
) -> None:
    order_id = _unpaid_order(shop)
    params = _forged_return(order_id, dev_keys / "alipay_private_key.pem", **changes)
    _assert_rejected(shop, order_id, params, why)


def test_return_signed_with_another_key_is_rejected(
    shop: ShopClient, dev_keys: Path
) -> None:
    order_id = _unpaid_order(shop)
    params = _forged_return(order_id, dev_keys / "app_private_key.pem")

    response = shop.put_status(params)

    assert response.status_code == 403, response.text
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNPAID
    # Not Alipay's: counted apart, never an event of the order nor shown to its buyer.
    assert not PaymentEvent.objects.filter(out_trade_no=order_id).exists()
    refused = RefusedRequest.objects.get(out_trade_no=order_id)
    assert (refused.source, refused.count) == ("return", 1)
    assert "signature" in refused.reason and "sign" not in refused.sample
    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"), timeout=10)
    assert status.status_code == 200 and status.json()["latest_event"] is None


def test_tampered_signature_is_rejected(shop: ShopClient, sandbox: SandboxControl) -> None:
    sandbox.set_faults(notify_drop=True)  # only the tampered return may reach the order
    order_id, params = _paid_order(shop, sandbox)
    params["sign"] = ("A" if params["sign"][0] != "A" else "B") + params["sign"][1:]
    response = shop.put_status(params)
    assert response.status_code == 403
    assert not Payment.objects.filter(order_id=order_id).exists()
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNPAID


def test_order_a_params_replayed_for_order_b_are_rejected(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_a, params = _paid_order(shop, sandbox)
    order_b = OrderFactory(user=OrderInfo.objects.get(order_id=order_a).user,
                           total_amount=Decimal("257.60")).order_id

    response = shop.put_status({**params, "out_trade_no": order_b})

    assert response.status_code == 403, response.text
    assert OrderInfo.objects.get(order_id=order_b).status == OrderInfo.Status.UNPAID
    assert not Payment.objects.filter(order_id=order_b).exists()
    # Order A is untouched by the replay and still pays with its own parameters.
    assert shop.put_status(params).status_code == 200
    assert Payment.objects.get(order_id=order_a).trade_id == params["trade_no"]


def test_paid_with_another_trade_query_mismatch_is_rejected(
    shop: ShopClient, sandbox: SandboxControl, dev_keys: Path
) -> None:
    """Validly signed, right amount, but Alipay's trade query knows another trade_no."""
    sandbox.set_faults(notify_drop=True)  # only the forged return may reach the order
    order_id, params = _paid_order(shop, sandbox)
    forged = _forged_return(
        order_id, dev_keys / "alipay_private_key.pem", total_amount=params["total_amount"],
        trade_no="2026112522001499999999999999",
    )
    _assert_rejected(shop, order_id, forged, "another trade_no")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "out_trade_no=123",
        "sign=abc",
        "sign=&out_trade_no=",
        "out_trade_no=%ff%fe&sign=%00",
        "&".join(f"k{i}=v" for i in range(100)) + "&sign=x&out_trade_no=1",
        "sign=x&out_trade_no=" + "9" * 5000,
    ],
    ids=["empty", "no-sign", "no-out-trade-no", "blank", "bad-bytes", "too-many", "too-long"],
)
def test_malformed_return_gets_400(web: str, query: str) -> None:
    import requests

    response = requests.put(f"{web}/payment/status/?{query}", timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["message"]


def test_garbage_signature_is_rejected_not_500(shop: ShopClient) -> None:
    order_id = _unpaid_order(shop)
    not_a_signature = "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA=="
    response = shop.put_status({"out_trade_no": order_id, "sign": not_a_signature,
                                "total_amount": "10.00", "app_id": "x"})
    assert response.status_code == 403
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNPAID


def test_unreadable_json_body_gets_400(web: str) -> None:
    import requests

    response = requests.put(
        f"{web}/payment/status/", data="{not json", timeout=10,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["message"]


def test_gateway_error_during_confirming_query_is_retried(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_drop=True)  # the return alone must pay, through the retries
    order_id, params = _paid_order(shop, sandbox)
    sandbox.set_faults(error_rate=1.0, error_kind="20000", methods=["alipay.trade.query"])

    first = shop.put_status(params)

    assert first.status_code == 202, first.text
    assert first.json() == {"status": "processing", "order_id": order_id}
    event = PaymentEvent.objects.get(order_id=order_id, source=PaymentEvent.Source.RETURN)
    wait_for(lambda: PaymentEvent.objects.get(pk=event.pk).attempts >= 2, 20)
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNPAID
    sandbox.clear_faults()

    wait_for(
        lambda: PaymentEvent.objects.get(pk=event.pk).state == PaymentEvent.State.APPLIED, 30
    )
    event.refresh_from_db()
    assert event.attempts >= 3
    assert "20000" in event.last_error
    assert OrderInfo.objects.get(order_id=order_id).status == OrderInfo.Status.UNSEND
    assert shop.put_status(params).json() == {"trade_id": params["trade_no"]}


def test_return_query_string_is_taken_verbatim(shop: ShopClient, sandbox: SandboxControl) -> None:
    """The storefront forwards Alipay's query string as it arrived, percent-encoding and all."""
    order_id, params = _paid_order(shop, sandbox)
    response = shop.put_status(urllib.parse.urlencode(params, quote_via=urllib.parse.quote))
    assert response.status_code == 200
    assert Payment.objects.filter(order_id=order_id).count() == 1


def test_return_after_the_notification_paid_is_answered_without_a_write(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id, params = _paid_order(shop, sandbox)
    wait_for(lambda: Payment.objects.filter(order_id=order_id).exists(), 20)  # the notification

    response = shop.put_status(params)

    assert response.status_code == 200, response.text
    assert response.json() == {"trade_id": params["trade_no"]}
    assert Payment.objects.get(order_id=order_id).source == "notify"
    assert not PaymentEvent.objects.filter(out_trade_no=order_id, source="return").exists()
