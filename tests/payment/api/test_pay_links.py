"""Pay links for the buyer's device: Alipay's desktop cashier (alipay.trade.page.pay) or its
mobile one (alipay.trade.wap.pay, QUICK_WAP_WAY, quit_url), chosen by `channel` or the device,
and recorded with the pay link. Signed with throwaway keys; no process."""
import json
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from payment import gateway
from payment.links import channel_for_device
from payment.models import PayChannel, PaymentAttempt
from tests.factories import OrderFactory, UserFactory
from tests.support import query_params

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/126.0.0.0 Mobile Safari/537.36")
DESKTOP = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/126.0.0.0 Safari/537.36")

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys(settings: Any, dev_keys: Path) -> Any:
    settings.ALIPAY_APP_PRIVATE_KEY_PATH = dev_keys / "app_private_key.pem"
    settings.ALIPAY_PUBLIC_KEY_PATH = dev_keys / "alipay_public_key.pem"
    settings.ALIPAY_GATEWAY = "https://openapi.example/gateway.do"
    settings.ALIPAY_RETURN_URL = "https://shop.example/pay_success.html"
    gateway.clients_reset()
    yield settings
    gateway.clients_reset()


def _link(order_id: str, client: APIClient, **headers: str) -> tuple[int, dict[str, Any]]:
    response = client.get(f"/orders/{order_id}/payment/", **headers)
    return response.status_code, response.json()


def _buyer_and_order() -> tuple[APIClient, str]:
    order = OrderFactory(user=UserFactory())
    client = APIClient()
    client.force_authenticate(order.user)
    return client, order.order_id


@pytest.mark.parametrize(("agent", "hint", "expected"), [
    (IPHONE, "", PayChannel.WAP),
    (ANDROID, "", PayChannel.WAP),
    (DESKTOP, "", PayChannel.PAGE),
    (DESKTOP, "?1", PayChannel.WAP),
    ("", "", PayChannel.PAGE),
])
def test_the_device_chooses_the_cashier(agent: str, hint: str, expected: PayChannel) -> None:
    assert channel_for_device(user_agent=agent, ua_mobile_hint=hint) == expected


def test_a_phone_gets_the_mobile_cashier_with_its_product_code_and_way_back(keys: Any) -> None:
    client, order_id = _buyer_and_order()

    status, body = _link(order_id, client, HTTP_USER_AGENT=IPHONE)

    assert status == 200 and set(body) == {"alipay_url"}
    params = query_params(body["alipay_url"])
    biz = json.loads(params["biz_content"])
    assert params["method"] == "alipay.trade.wap.pay"
    assert biz["product_code"] == "QUICK_WAP_WAY"
    assert biz["quit_url"] == f"https://shop.example/my/orders/{order_id}/"
    assert biz["out_trade_no"] == order_id and biz["time_expire"]
    assert params["return_url"] == "https://shop.example/pay_success.html"
    assert PaymentAttempt.objects.get(order_id=order_id).channel == PayChannel.WAP


def test_a_desktop_gets_the_desktop_cashier(keys: Any) -> None:
    client, order_id = _buyer_and_order()

    status, body = _link(order_id, client, HTTP_USER_AGENT=DESKTOP)

    params = query_params(body["alipay_url"])
    assert status == 200 and params["method"] == "alipay.trade.page.pay"
    assert json.loads(params["biz_content"])["product_code"] == "FAST_INSTANT_TRADE_PAY"
    assert PaymentAttempt.objects.get(order_id=order_id).channel == PayChannel.PAGE


def test_the_channel_asked_for_wins_over_the_device_and_is_recorded(keys: Any) -> None:
    client, order_id = _buyer_and_order()

    first = _link(order_id, client, HTTP_USER_AGENT=IPHONE, QUERY_STRING="channel=page")
    second = client.get(f"/orders/{order_id}/payment/?channel=wap", HTTP_USER_AGENT=DESKTOP)

    assert query_params(first[1]["alipay_url"])["method"] == "alipay.trade.page.pay"
    assert query_params(second.json()["alipay_url"])["method"] == "alipay.trade.wap.pay"
    attempt = PaymentAttempt.objects.get(order_id=order_id)
    assert (attempt.channel, attempt.links_issued) == (PayChannel.WAP, 2)


def test_an_unknown_channel_is_a_400_naming_the_choices(keys: Any) -> None:
    client, order_id = _buyer_and_order()

    response = client.get(f"/orders/{order_id}/payment/?channel=app")

    assert response.status_code == 400
    assert response.json() == {"message": "channel must be page or wap."}
    assert not PaymentAttempt.objects.filter(order_id=order_id).exists()
