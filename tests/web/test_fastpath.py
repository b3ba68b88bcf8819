"""The intake endpoints as production serves them (payment/intake/asgi.py under uvicorn):
the same answers and records as the Django views, with real workers and the sandbox."""
import urllib.parse
from pathlib import Path

import pytest
import requests

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentEvent, RefusedRequest
from shop.models import OrderInfo
from tests.factories import OrderFactory, order_with_link
from tests.support import APP_ID, SELLER_ID, query_params, sign_params, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_workers")]


def _put(base: str, params: dict[str, str]) -> requests.Response:
    return requests.put(f"{base}/payment/status/?{urllib.parse.urlencode(params)}", timeout=30)


def test_return_pays_then_reload_is_answered_from_the_payment(
    asgi_web: str, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_drop=True)  # the return is what pays
    order, url = order_with_link()
    paid = sandbox.pay(url)
    params = query_params(paid["return_url"])

    first = _put(asgi_web, params)
    again = _put(asgi_web, params)

    assert (first.status_code, first.json()) == (200, {"trade_id": params["trade_no"]})
    assert (again.status_code, again.json()) == (200, {"trade_id": params["trade_no"]})
    assert Payment.objects.get(order=order).trade_id == params["trade_no"]
    event = PaymentEvent.objects.get(order=order, source="return")
    assert (event.state, event.deliveries) == (PaymentEvent.State.APPLIED, 1)


def test_forged_and_malformed_returns_are_refused(asgi_web: str, dev_keys: Path) -> None:
    order = OrderFactory()
    forged = sign_params({
        "out_trade_no": order.order_id, "method": "alipay.trade.page.pay.return",
        "total_amount": "9.90", "trade_no": "2026112622001400000000000123", "app_id": APP_ID,
        "seller_id": SELLER_ID,
    }, (dev_keys / "app_private_key.pem").read_bytes())  # not Alipay's key

    refused = _put(asgi_web, forged)
    malformed = requests.put(f"{asgi_web}/payment/status/?out_trade_no=1", timeout=10)
    not_json = requests.put(f"{asgi_web}/payment/status/", data="[" * 60_000, timeout=10,
                            headers={"Content-Type": "application/json"})
    too_large = requests.put(f"{asgi_web}/payment/status/", data="[" * 100_000, timeout=10,
                             headers={"Content-Type": "application/json"})
    wrong_method = requests.get(f"{asgi_web}/payment/status/", timeout=10)
    too_many = requests.put(f"{asgi_web}/payment/status/", timeout=10,
                            data="&".join(f"k{i}=v" for i in range(1500)),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert refused.status_code == 403 and refused.json()["message"]
    assert malformed.status_code == 400 and "sign" in malformed.json()["message"]
    assert not_json.status_code == 400 and not_json.json()["message"]
    assert too_large.status_code == 413 and too_large.json()["message"]
    assert wrong_method.status_code == 405
    assert too_many.status_code == 400 and too_many.json()["message"]
    assert not PaymentEvent.objects.filter(out_trade_no=order.order_id).exists()
    # One row per client and hour: the first refusal's sample, every refusal counted.
    record = RefusedRequest.objects.get(out_trade_no=order.order_id)
    assert "signature" in record.reason and record.count == 4
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNPAID


def test_notification_stored_once_counted_and_applied(asgi_web: str, dev_keys: Path) -> None:
    order = OrderFactory()
    params = sign_params({
        "notify_type": "trade_status_sync", "notify_id": f"fast-{order.order_id}",
        "app_id": APP_ID, "out_trade_no": order.order_id,
        "trade_no": "2026112622001400000000000456", "trade_status": "TRADE_SUCCESS",
        "total_amount": "9.90", "seller_id": SELLER_ID,
    }, (dev_keys / "alipay_private_key.pem").read_bytes())
    url = f"{asgi_web}/payment/alipay/notify/"

    answers = [requests.post(url, data=params, timeout=10) for _ in range(2)]
    junk = requests.post(url, data={"hello": "world"}, timeout=10)
    wrong_method = requests.get(url, timeout=10)

    assert [(a.status_code, a.text) for a in answers] == [(200, "success")] * 2
    assert (junk.status_code, junk.text) == (400, "fail")
    assert wrong_method.status_code == 405
    wait_for(lambda: OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNSEND, 20)
    event = PaymentEvent.objects.get(dedupe_key=f"notify:fast-{order.order_id}")
    assert (event.state, event.deliveries) == (PaymentEvent.State.APPLIED, 2)
    assert Payment.objects.get(order=order).source == "notify"
