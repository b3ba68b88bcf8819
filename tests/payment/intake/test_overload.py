"""Past INTAKE_MAX_ACTIVE requests worked on at once, the Procfile's web refuses a new intake
request once no place came free within INTAKE_QUEUE_SECONDS (503 with Retry-After; `fail` to
Alipay) and stores nothing of it; the same notification sent again later (Alipay's retry) is
applied once. Returns that only wait for the workers do not count.

The requests worked on are held in place by a lock on the events table, which the web's insert
waits for: one web process (WEB_CONCURRENCY=1), a limit of 2.
"""
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from django.db import connection

from payment.models import Payment, PaymentEvent, RefusedRequest
from shop.models import OrderInfo
from tests.factories import OrderFactory
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    procfile_command,
    sign_params,
    signed_return,
    wait_for,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)

APPLICATION_NAME = "overload-web"
RETRY_AFTER = "7"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def limited_web(worker_env: dict[str, str], log_dir: Path,
                exclusive_workers: Callable[..., ManagedProcess]) -> Iterator[str]:
    """The Procfile's web, one process working on at most 2 intake requests; no worker yet."""
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
           "INTAKE_MAX_ACTIVE": "2", "INTAKE_QUEUE_SECONDS": "0.2",
           "INTAKE_RETRY_AFTER_SECONDS": RETRY_AFTER,
           "RETURN_WAIT_SECONDS": "4", "PGAPPNAME": APPLICATION_NAME}
    web = ManagedProcess(APPLICATION_NAME, procfile_command("web"), env, log_dir).start()
    wait_for_port(port, timeout=60)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def _notification(order: OrderInfo, dev_keys: Path) -> str:
    params = sign_params({
        "notify_type": "trade_status_sync", "notify_id": f"n-{order.order_id}",
        "app_id": APP_ID, "out_trade_no": order.order_id,
        "trade_no": f"2026120722{order.order_id[-18:]:0>18}", "trade_status": "TRADE_SUCCESS",
        "total_amount": f"{order.total_amount:.2f}", "seller_id": SELLER_ID,
    }, (dev_keys / "alipay_private_key.pem").read_bytes())
    return urllib.parse.urlencode(params)


def _notify(base: str, body: str) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    response = requests.post(f"{base}/payment/alipay/notify/", data=body, headers=FORM,
                             timeout=30)
    return response, time.perf_counter() - started


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                       " AND datname = current_database() AND wait_event_type = 'Lock'",
                       [APPLICATION_NAME])
        return int(cursor.fetchone()[0])


def _events_locked() -> psycopg.Connection[Any]:
    """A transaction that holds the events table against every insert until it ends."""
    settings = connection.settings_dict
    lock = psycopg.connect(host=settings["HOST"] or "127.0.0.1", port=settings["PORT"] or 5432,
                           user=settings["USER"], dbname=settings["NAME"])
    lock.execute(f"LOCK TABLE {PaymentEvent._meta.db_table} IN EXCLUSIVE MODE")
    return lock


def test_past_the_limit_requests_get_503_at_once_are_not_stored_and_apply_once_when_resent(
    limited_web: str, dev_keys: Path, exclusive_workers: Callable[..., ManagedProcess]
) -> None:
    orders = OrderFactory.create_batch(6, total_amount=Decimal("12.30"))
    bodies = [_notification(order, dev_keys) for order in orders]
    key = (dev_keys / "alipay_private_key.pem").read_bytes()
    waiting_returns = [signed_return(order.order_id, "9.90", f"2026120733{i:018d}", key)
                       for i, order in enumerate(OrderFactory.create_batch(3))]
    refused_return = signed_return(orders[5].order_id, "12.30", "2026120744000000000000000001",
                                   key)

    with ThreadPoolExecutor(8) as pool:
        # Three returns wait for a worker that does not run, one after the other: once stored
        # and waiting, they are not work.
        waits = []
        for count, params in enumerate(waiting_returns, 1):
            waits.append(pool.submit(requests.put, f"{limited_web}/payment/status/?"
                                     f"{urllib.parse.urlencode(params)}", timeout=30))
            wait_for(lambda count=count: PaymentEvent.objects.filter(  # type: ignore[misc]
                source="return").count() == count, 10, 0.05)
        beside_waits, _ = _notify(limited_web, bodies[0])

        lock = _events_locked()
        try:
            held: list[Future[tuple[requests.Response, float]]] = [
                pool.submit(_notify, limited_web, body) for body in bodies[1:3]]
            wait_for(lambda: _lock_waiters() == 2, 10, 0.05)
            refused = [_notify(limited_web, body) for body in bodies[3:]]
            started = time.perf_counter()
            refused_put = requests.put(f"{limited_web}/payment/status/?"
                                       f"{urllib.parse.urlencode(refused_return)}", timeout=30)
            refused_put_seconds = time.perf_counter() - started
            nothing_stored = not PaymentEvent.objects.filter(
                out_trade_no__in=[o.order_id for o in orders[3:]]).exists()
            nothing_counted = not RefusedRequest.objects.exists()
        finally:
            lock.close()  # the held inserts go on
        held_answers = [future.result()[0] for future in held]
        waited = [future.result() for future in waits]

    assert [r.status_code for r in waited] == [202, 202, 202]
    assert (beside_waits.status_code, beside_waits.text) == (200, "success")
    assert [(r.status_code, r.text) for r in held_answers] == [(200, "success")] * 2
    for response, seconds in refused:
        assert (response.status_code, response.text) == (503, "fail")
        assert response.headers["Retry-After"] == RETRY_AFTER
        assert seconds < 1.0, f"refused after {seconds:.2f} s"
    assert refused_put.status_code == 503
    assert refused_put.headers["Retry-After"] == RETRY_AFTER
    assert refused_put.json()["message"]
    assert refused_put_seconds < 1.0
    assert nothing_stored and nothing_counted

    # Alipay's retries, and one more delivery of a notification already stored.
    again = [_notify(limited_web, body)[0] for body in (*bodies[3:], bodies[1])]
    assert [(r.status_code, r.text) for r in again] == [(200, "success")] * 4
    exclusive_workers("overload-worker")
    ids = [order.order_id for order in orders]
    wait_for(lambda: OrderInfo.objects.filter(
        order_id__in=ids, status=OrderInfo.Status.UNSEND).count() == 6, 30, 0.2)
    assert sorted(Payment.objects.values_list("order_id", flat=True).filter(
        order_id__in=ids)) == sorted(ids)
    notify_events = PaymentEvent.objects.filter(source="notify", out_trade_no__in=ids)
    assert sorted(notify_events.values_list("out_trade_no", flat=True)) == sorted(ids)
