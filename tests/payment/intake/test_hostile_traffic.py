"""Hostile traffic at the intake endpoints, against the production web process (two gunicorn
workers), PostgreSQL and Redis: junk is refused, counted in bounded rows and throttled per
client across processes, while Alipay's verified notifications always get through."""
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from payment.models import PaymentEvent, RefusedRequest
from tests.factories import OrderFactory
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    process_fixture,
    procfile_command,
    redis_url,
    sign_params,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Daily windows: a test cannot straddle a window's edge except at midnight UTC.
REFUSED_RATE = 10
STATUS_RATE = 6


@process_fixture
def strict_web(worker_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """The Procfile's web process with two workers and low throttles on their own Redis db."""
    throttle_redis = redis_url(10, worker_env["CELERY_BROKER_URL"])
    redis.Redis.from_url(throttle_redis).flushdb()
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
           "DJANGO_DEBUG": "false", "PAYMENT_REDIS_URL": throttle_redis,
           "PAYMENT_REFUSED_RATE": f"{REFUSED_RATE}/day",
           "RETURN_RATE": f"{STATUS_RATE}/day", "RETURN_WAIT_SECONDS": "0"}
    web = ManagedProcess("strict-web", procfile_command("web"), env, log_dir).start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def _notification(order_id: str, key: Path, notify_id: str) -> dict[str, str]:
    return sign_params({
        "notify_type": "trade_status_sync", "notify_id": notify_id, "app_id": APP_ID,
        "out_trade_no": order_id, "trade_no": "2026112622001400000000000555",
        "trade_status": "WAIT_BUYER_PAY", "total_amount": "9.90", "seller_id": SELLER_ID,
    }, key.read_bytes())


def _post(base: str, data: dict[str, str] | str) -> requests.Response:
    # A new connection each time, so that requests spread over both web workers.
    return requests.post(f"{base}/payment/alipay/notify/", data=data, timeout=10,
                         headers={"Connection": "close",
                                  "Content-Type": "application/x-www-form-urlencoded"})


def test_forged_notifications_are_counted_bounded_and_throttled_across_processes(
    strict_web: str, dev_keys: Path
) -> None:
    order = OrderFactory()
    forged = [_post(strict_web, _notification(order.order_id, dev_keys / "app_private_key.pem",
                                              f"forged-{i}")) for i in range(REFUSED_RATE + 8)]
    oversized = _post(strict_web, "&".join(f"f{i}={'x' * 4000}" for i in range(62)))

    codes = [response.status_code for response in forged]
    assert codes == [400] * REFUSED_RATE + [429] * 8, codes  # one count for both processes
    assert {response.text for response in forged} == {"fail"}
    assert (oversized.status_code, oversized.text) == (413, "fail")
    # Nothing of it is a payment event, linked to the order or shown to its buyer.
    assert not PaymentEvent.objects.exists()
    refused = RefusedRequest.objects.get()
    assert (refused.source, refused.remote_addr, refused.count) == ("notify", "127.0.0.1",
                                                                    REFUSED_RATE)
    assert refused.out_trade_no == order.order_id and "sign" not in refused.sample
    assert "signature" in refused.reason


def test_verified_notifications_and_their_retries_are_never_throttled(
    strict_web: str, dev_keys: Path
) -> None:
    order = OrderFactory()
    for i in range(REFUSED_RATE + 1):
        _post(strict_web, {"sign": "x" * 20, "out_trade_no": order.order_id, "n": str(i)})
    assert _post(strict_web, {"junk": "1"}).status_code == 429

    genuine = _notification(order.order_id, dev_keys / "alipay_private_key.pem", "n-1")
    deliveries = [_post(strict_web, genuine) for _ in range(REFUSED_RATE + 2)]

    assert {(r.status_code, r.text) for r in deliveries} == {(200, "success")}
    event = PaymentEvent.objects.get(source="notify", order=order)
    assert event.deliveries == REFUSED_RATE + 2


def test_parameters_far_larger_than_alipay_sends_are_refused_with_a_small_sample(
    strict_web: str,
) -> None:
    fields = {f"f{i}": "x" * 4000 for i in range(15)}  # 60 KB, under the body limit

    response = _post(strict_web, {**fields, "sign": "s" * 64, "out_trade_no": "123"})

    assert (response.status_code, response.text) == (400, "fail")
    refused = RefusedRequest.objects.get()
    assert "too large" in refused.reason
    assert len(json.dumps(refused.sample)) < 4096


def test_returns_are_throttled_per_client_with_retry_after(strict_web: str) -> None:
    order = OrderFactory()
    query = urllib.parse.urlencode({"out_trade_no": order.order_id, "sign": "s" * 32})

    answers = [requests.put(f"{strict_web}/payment/status/?{query}", timeout=10,
                            headers={"Connection": "close"}) for _ in range(STATUS_RATE + 2)]

    assert [a.status_code for a in answers] == [403] * STATUS_RATE + [429] * 2
    throttled = answers[-1]
    assert "Too many requests" in throttled.json()["message"]
    assert int(throttled.headers["Retry-After"]) > 0
    assert RefusedRequest.objects.get().count == STATUS_RATE
