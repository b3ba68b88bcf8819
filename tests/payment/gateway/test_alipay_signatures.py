"""Verifying exactly what Alipay signed: empty parameters kept, GBK notifications decoded,
and pay links that expire with their order."""
import json
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.utils import timezone

from alipay_sandbox.client import SandboxControl, SandboxError
from payment import gateway
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo
from tests.factories import order_with_link, signed_in
from tests.support import APP_ID, SELLER_ID, ShopClient, query_params, sign_params, wait_for

FIXTURE = Path(__file__).parent / "fixtures" / "alipay_signed_notification.json"


@pytest.fixture
def easysdk_key(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Alipay's public key from the fixture in place of ours, for the length of a test."""
    fixture = json.loads(FIXTURE.read_text())
    key_path = tmp_path / "alipay_public_key.pem"
    key_path.write_text(fixture["alipay_public_key"])
    saved = settings.ALIPAY_PUBLIC_KEY_PATH
    settings.ALIPAY_PUBLIC_KEY_PATH = key_path
    gateway.clients_reset()
    yield fixture
    settings.ALIPAY_PUBLIC_KEY_PATH = saved
    gateway.clients_reset()


def test_a_notification_alipay_signed_with_an_empty_parameter_verifies(
    easysdk_key: dict[str, Any],
) -> None:
    params = dict(easysdk_key["params"])
    assert params["isv_ticket"] == ""  # Alipay signed it, empty

    assert gateway.signature_valid(params)
    assert not gateway.signature_valid({**params, "isv_ticket": "x"})
    assert not gateway.signature_valid({k: v for k, v in params.items() if k != "isv_ticket"})
    assert not gateway.signature_valid({**params, "total_price": "0.02"})


def _order_with_link(shop: ShopClient) -> str:
    """An order of 66.60 with its pay link; `shop` is signed in as its buyer."""
    order, _ = order_with_link(total_amount=Decimal("66.60"))
    signed_in(shop, order.user)
    return order.order_id


def _notification(order_id: str, **extra: str) -> dict[str, str]:
    return {
        "notify_type": "trade_status_sync", "notify_id": f"n-{order_id}", "app_id": APP_ID,
        "out_trade_no": order_id, "trade_no": f"20261126{order_id[-20:]:0>20}",
        "trade_status": "TRADE_SUCCESS", "total_amount": "66.60", "seller_id": SELLER_ID,
        **extra,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers")
@pytest.mark.parametrize("server", ["web", "asgi_web"])
@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_notifications_with_empty_parameters_or_in_gbk_pay_their_order(
    request: pytest.FixtureRequest, shop: ShopClient, dev_keys: Path, server: str, charset: str
) -> None:
    base = request.getfixturevalue(server)
    order_id = _order_with_link(shop)
    params = sign_params(_notification(order_id, charset=charset, subject="测试订单·赵华杰",
                                       isv_ticket="", passback_params=""),
                         (dev_keys / "alipay_private_key.pem").read_bytes())
    body = urllib.parse.urlencode(params, encoding="gbk" if charset == "gbk" else "utf-8")

    answer = requests.post(f"{base}/payment/alipay/notify/", data=body, timeout=10, headers={
        "Content-Type": "application/x-www-form-urlencoded"})

    assert (answer.status_code, answer.text) == (200, "success")
    wait_for(lambda: OrderInfo.objects.get(order_id=order_id).status
             == OrderInfo.Status.UNSEND, 20)
    event = PaymentEvent.objects.get(order_id=order_id, source="notify")
    assert event.state == PaymentEvent.State.APPLIED
    assert event.raw_data["subject"] == "测试订单·赵华杰"
    assert event.raw_data["isv_ticket"] == ""
    assert Payment.objects.get(order_id=order_id).trade_id == params["trade_no"]


@pytest.mark.django_db(transaction=True)
def test_pay_link_expires_with_the_order(shop: ShopClient) -> None:
    order_id = _order_with_link(shop)
    order = OrderInfo.objects.get(order_id=order_id)

    link = shop.pay_link(order_id).json()["alipay_url"]
    biz = json.loads(query_params(link)["biz_content"])
    deadline = order.created_at + timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS)
    assert biz["time_expire"] == gateway.beijing_time(deadline)
    assert biz["time_expire"] == (deadline + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")

    OrderInfo.objects.filter(pk=order_id).update(
        created_at=timezone.now() - timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS + 1))
    late = shop.pay_link(order_id)
    assert late.status_code == 400
    assert "time to pay has passed" in late.json()["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_workers")
def test_a_pay_link_used_after_the_deadline_cannot_be_paid_at_alipay(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _order_with_link(shop)
    # Placed long ago: two seconds of its time to pay are left when the link is made.
    OrderInfo.objects.filter(pk=order_id).update(
        created_at=timezone.now() - timedelta(seconds=settings.ORDER_PAY_TIMEOUT_SECONDS - 2))
    link = shop.pay_link(order_id).json()["alipay_url"]
    time.sleep(3)

    with pytest.raises(SandboxError) as refused:
        sandbox.pay(link)

    assert "TRADE_HAS_CLOSE" in str(refused.value.payload)
    time.sleep(1)
    # Unpaid, or already canceled by expiry when beat runs: never paid.
    assert OrderInfo.objects.get(pk=order_id).status in (OrderInfo.Status.UNPAID,
                                                         OrderInfo.Status.CANCELED)
    assert not Payment.objects.filter(order_id=order_id).exists()


def test_the_signed_form_sent_is_the_sdks_own_byte_for_byte(
    alipay_settings: dict[str, str],
) -> None:
    """`sign_data` encodes the signature without `quote_plus`: the form must not change."""
    sdk = gateway.client._client()
    base = super(type(sdk), sdk)  # python-alipay-sdk's own sign_data
    seen: set[str] = set()
    for n in range(40):
        data = sdk.build_body("alipay.trade.page.pay", {
            "out_trade_no": f"20261207{n:06d}", "total_amount": f"{n}.01",
            "subject": f"测试 a+b/c=d&e%f ~{n}"}, return_url="https://shop.example/r?a=1&b=2")
        ours = sdk.sign_data(dict(data))
        assert ours == base.sign_data(dict(data))
        signature = urllib.parse.parse_qs(ours)["sign"][0]
        seen |= set(signature)
        assert gateway.client.base64_quote(signature) == urllib.parse.quote_plus(signature)
    assert {"+", "/", "="} <= seen  # every character the encoding changes was met
