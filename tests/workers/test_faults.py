"""Nothing paid is lost or applied twice: killed workers, a broker away, a database away,
and a failing gateway. Real PostgreSQL, Redis, `celery worker`/`beat` and the sandbox; the
tests of killed workers and of a broker away run on Redis and on RabbitMQ."""
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from django.db import connection
from django.db.models import Count

from alipay_sandbox.client import SandboxControl
from payment import event_store
from payment.models import Payment, PaymentAttempt, PaymentEvent
from payment.tasks import events_process_task, events_sweep_task
from shop.models import OrderInfo
from tests.conftest import worker_process
from tests.factories import OrderFactory, orders_with_links
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    TcpProxy,
    free_port,
    python_args,
    sign_params,
    wait_for,
    wait_for_port,
)
from tests.workers.brokers import BrokerUnderTest, PrivateBroker, private_broker
from workers.celery import app as celery_app

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_beat"),
]


def _orders_with_links(count: int, price: str = "18.88") -> list[tuple[str, str]]:
    return [(order.order_id, url)
            for order, url in orders_with_links(count, total_amount=Decimal(price))]


def _pay_all(sandbox: SandboxControl, links: list[tuple[str, str]]) -> list[dict[str, str]]:
    with ThreadPoolExecutor(8) as pool:
        paid = list(pool.map(lambda link: sandbox.pay(link[1]), links))
    # Every parameter, empty ones too: Alipay signs them all.
    return [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p["return_url"]).query,
                                        keep_blank_values=True))
            for p in paid]


def _assert_each_paid_once(order_ids: list[str]) -> None:
    assert OrderInfo.objects.filter(order_id__in=order_ids).exclude(
        status=OrderInfo.Status.UNSEND).count() == 0
    per_order = Payment.objects.filter(order_id__in=order_ids).values("order_id").annotate(
        n=Count("id"))
    assert {row["n"] for row in per_order} == {1}
    assert len(per_order) == len(order_ids)
    assert not PaymentEvent.objects.filter(
        out_trade_no__in=order_ids, state__in=["rejected", "dead"]).exists()


def _paid_count(order_ids: list[str]) -> int:
    return OrderInfo.objects.filter(
        order_id__in=order_ids, status=OrderInfo.Status.UNSEND).count()


def test_worker_killed_mid_500_payments_pays_all_once(
    sandbox: SandboxControl, exclusive_workers: Any, broker_with_beat: BrokerUnderTest
) -> None:
    broker = broker_with_beat
    sandbox.set_faults(notify_drop=True)
    links = _orders_with_links(500)
    order_ids = [order_id for order_id, _ in links]
    for params in _pay_all(sandbox, links):
        event_store.event_insert(source=PaymentEvent.Source.RETURN, params=params)

    # Small batches, so that the kill lands with some orders paid and others not yet.
    first = exclusive_workers("doomed", concurrency=4, PAYMENT_BATCH_SIZE="20", **broker.env)
    broker.wake()
    wait_for(lambda: _paid_count(order_ids) >= 100, 120, 0.02)
    first.kill()  # SIGKILL to the whole process group: parent and pool children
    killed_at = _paid_count(order_ids)
    assert killed_at < 500

    exclusive_workers("survivor", concurrency=4, **broker.env)
    wait_for(lambda: _paid_count(order_ids) == 500, 180, 0.5)

    _assert_each_paid_once(order_ids)
    assert Payment.objects.filter(order_id__in=order_ids).count() == 500


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_broker_down_while_notifications_arrive_loses_nothing(
    kind: str, sandbox: SandboxControl, exclusive_workers: Any, worker_env: dict[str, str],
    log_dir: Path, tmp_path: Path, settings: Any,
) -> None:
    """A broker of the test's own (Redis with its append-only file, or a RabbitMQ node) is
    stopped while Alipay notifies; each notification is stored and answered `success`."""
    private: PrivateBroker = private_broker(kind, tmp_path, log_dir).start()
    # With RabbitMQ there is no Redis at all: waits and throttles use their fallbacks.
    env = {**worker_env, "CELERY_BROKER_URL": private.url,
           **({"PAYMENT_REDIS_URL": ""} if kind == "rabbitmq" else {})}
    web_port = free_port()
    web = ManagedProcess(f"private-web-{kind}", python_args(
        "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{web_port}", "--worker-class",
        "gthread", "--threads", "8"), env, log_dir).start()
    extra: list[ManagedProcess] = [web]
    try:
        wait_for_port(web_port)
        settings.ALIPAY_NOTIFY_URL = f"http://127.0.0.1:{web_port}/payment/alipay/notify/"
        sandbox.set_faults(drop_return=True)
        links = _orders_with_links(20)
        order_ids = [order_id for order_id, _ in links]

        private.stop()
        _pay_all(sandbox, links)

        def all_acknowledged() -> bool:
            notes = [n for n in sandbox.notifications() if n["out_trade_no"] in order_ids]
            return len(notes) == 20 and all(n["state"] == "delivered" for n in notes)

        wait_for(all_acknowledged, 60, 0.3)
        for note in sandbox.notifications():
            if note["out_trade_no"] in order_ids:
                assert note["attempts"][0]["body"] == "success"  # the first answer
        assert PaymentEvent.objects.filter(
            out_trade_no__in=order_ids, source="notify", state="received").count() == 20
        assert _paid_count(order_ids) == 0

        private.start()
        extra.append(worker_process(env, log_dir, f"private-worker-{kind}").start())
        extra.append(ManagedProcess(f"private-beat-{kind}", python_args(
            "-m", "celery", "-A", "workers", "beat", "--schedule", str(tmp_path / "beat")),
            env, log_dir).start())

        wait_for(lambda: _paid_count(order_ids) == 20, 60, 0.3)
        _assert_each_paid_once(order_ids)
        assert set(Payment.objects.filter(order_id__in=order_ids).values_list(
            "source", flat=True)) <= {"notify", "query"}
    finally:
        for process in extra:
            process.stop()
        private.kill()


def test_database_away_from_workers_then_back_applies_all(
    sandbox: SandboxControl, exclusive_workers: Any, worker_env: dict[str, str]
) -> None:
    proxy = TcpProxy(5432)
    try:
        database_url = worker_env["DATABASE_URL"].replace(":5432/", f":{proxy.port}/")
        worker = exclusive_workers("cut-off", DATABASE_URL=database_url)
        sandbox.set_faults(notify_drop=True)
        links = _orders_with_links(30)
        order_ids = [order_id for order_id, _ in links]
        returns = _pay_all(sandbox, links)

        proxy.down()
        for params in returns:
            event_store.event_insert(source=PaymentEvent.Source.RETURN, params=params)
        events_process_task.delay()  # the wake-up the intake sends
        time.sleep(4)
        assert _paid_count(order_ids) == 0  # the workers cannot reach the database
        proxy.up()

        wait_for(lambda: _paid_count(order_ids) == 30, 90, 0.3)
        _assert_each_paid_once(order_ids)
        # The attempts counter lives in the database the workers could not reach: the
        # worker's own log shows the retries.
        assert "OperationalError" in worker.log_text()
        assert "Retry in" in worker.log_text()
    finally:
        proxy.close()


def test_gateway_errors_during_reconciliation_are_retried_later(
    sandbox: SandboxControl, celery_workers: ManagedProcess, fast_schedule: dict
) -> None:
    sandbox.set_faults(drop_return=True, notify_drop=True)
    links = _orders_with_links(10)
    order_ids = [order_id for order_id, _ in links]
    _pay_all(sandbox, links)

    for kind, seconds in (("20000", 3), ("http500", 3), ("timeout", 7)):
        sandbox.set_faults(drop_return=True, notify_drop=True, error_rate=1.0, error_kind=kind,
                           timeout_s=6, methods=["alipay.trade.query"])
        time.sleep(seconds)
        assert _paid_count(order_ids) == 0
    assert PaymentAttempt.objects.filter(
        order_id__in=order_ids, last_check_result__startswith="error").exists()
    assert OrderInfo.objects.filter(order_id__in=order_ids,
                                    status=OrderInfo.Status.CANCELED).count() == 0

    sandbox.clear_faults()
    wait_for(lambda: _paid_count(order_ids) == 10, 40, 0.3)
    _assert_each_paid_once(order_ids)
    assert set(Payment.objects.filter(order_id__in=order_ids).values_list(
        "source", flat=True)) == {"query"}


def test_notification_answers_fail_while_the_database_is_away(
    worker_env: dict[str, str], log_dir: Path, dev_keys: Path
) -> None:
    """`success` means stored: with no database the web answers `fail`, so Alipay retries."""
    proxy = TcpProxy(5432)
    port = free_port()
    env = {**worker_env,
           "DATABASE_URL": worker_env["DATABASE_URL"].replace(":5432/", f":{proxy.port}/"),
           "DATABASE_CONN_MAX_AGE": "0"}
    web = ManagedProcess("db-away-web", python_args(
        "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--worker-class",
        "gthread", "--threads", "2"), env, log_dir).start()
    try:
        wait_for_port(port)
        params = sign_params({
            "notify_type": "trade_status_sync", "notify_id": "db-away-1",
            "app_id": worker_env["ALIPAY_APPID"], "out_trade_no": "20261125000000000000000000001",
            "trade_no": "2026112522001400000000000099", "trade_status": "TRADE_SUCCESS",
            "total_amount": "1.00", "seller_id": SELLER_ID,
        }, (dev_keys / "alipay_private_key.pem").read_bytes())
        url = f"http://127.0.0.1:{port}/payment/alipay/notify/"

        proxy.down()
        away = requests.post(url, data=params, timeout=30)
        proxy.up()
        back = requests.post(url, data=params, timeout=30)
        again = requests.post(url, data=params, timeout=30)
    finally:
        web.stop()
        proxy.close()

    assert (away.status_code, away.text) == (503, "fail")
    assert (back.status_code, back.text) == (200, "success")
    assert (again.status_code, again.text) == (200, "success")
    stored = PaymentEvent.objects.get(dedupe_key="notify:db-away-1")
    assert stored.deliveries == 2


def _signed_notifications(order_ids: list[str], amount: str, key: bytes) -> list[dict[str, str]]:
    return [sign_params({
        "notify_type": "trade_status_sync", "notify_id": f"batch-{order_id}",
        "app_id": APP_ID, "out_trade_no": order_id, "trade_no": f"T{order_id}",
        "trade_status": "TRADE_SUCCESS", "total_amount": amount, "seller_id": SELLER_ID,
    }, key) for order_id in order_ids]


def _backends_waiting_to_insert_payments() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"payment_payment\"%%'"
        )
        return int(cursor.fetchone()[0])


def test_worker_killed_inside_a_batch_transaction_leaves_nothing_half_applied(
    exclusive_workers: Any, dev_keys: Path, broker_with_beat: BrokerUnderTest
) -> None:
    broker = broker_with_beat
    links = _orders_with_links(200, price="7.77")
    order_ids = [order_id for order_id, _ in links]
    for params in _signed_notifications(order_ids, "7.77",
                                        (dev_keys / "alipay_private_key.pem").read_bytes()):
        event_store.event_insert(source=PaymentEvent.Source.NOTIFY, params=params)
    elsewhere = OrderFactory(user=OrderInfo.objects.get(order_id=order_ids[0]).user,
                             total_amount=Decimal("7.77"))

    # Another transaction holds the last order's trade_no, uncommitted: the worker's batch
    # insert of the payments stops there, inside its transaction, with rows already written.
    db = connection.settings_dict
    blocker = psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                              user=db["USER"], dbname=db["NAME"])
    try:
        blocker.execute(
            "INSERT INTO payment_payment (order_id, trade_id, amount, source, status, "
            "refund_request_no, note, created_at) VALUES (%s, %s, 7.77, 'notify', 'applied', "
            "'', '', now())", [elsewhere.order_id, f"T{order_ids[-1]}"])
        doomed = exclusive_workers("mid-transaction", concurrency=1, **broker.env)
        broker.wake()
        wait_for(_backends_waiting_to_insert_payments, 30, 0.05)
        doomed.kill()
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: _backends_waiting_to_insert_payments() == 0, 30, 0.1)
    time.sleep(0.5)  # the killed worker's session finds its client gone and rolls back

    assert not Payment.objects.filter(order_id__in=[*order_ids, elsewhere.order_id]).exists()
    assert _paid_count(order_ids) == 0
    stored = PaymentEvent.objects.filter(out_trade_no__in=order_ids)
    assert set(stored.values_list("state", "attempts")) == {("received", 1)}

    # The sweeper wakes it once the lease ends (on RabbitMQ the killed worker's message is
    # back in the queue as well).
    exclusive_workers("after-kill", concurrency=2, **broker.env)
    wait_for(lambda: _paid_count(order_ids) == 200, 60, 0.3)
    _assert_each_paid_once(order_ids)
    assert set(stored.values_list("state", "attempts")) == {("applied", 2)}


def test_worker_carries_on_after_the_database_ends_its_connections(
    sandbox: SandboxControl, exclusive_workers: Any, beat_paused: None
) -> None:
    """A PostgreSQL restart (or failover, or an operator's pg_terminate_backend) ends the
    worker's connection between two tasks: the next task (here the sweeper's, whose first
    query runs outside a transaction) finds it out and reconnects, and so do the ones after."""
    celery_app.control.purge()  # what beat queued before it paused: only this test's tasks
    worker = exclusive_workers("reconnects", concurrency=1, PGAPPNAME="reconnect-worker")
    sandbox.set_faults(notify_drop=True)
    links = _orders_with_links(4)
    order_ids = [order_id for order_id, _ in links]
    returns = _pay_all(sandbox, links)
    event_store.event_insert(source=PaymentEvent.Source.RETURN, params=returns[0])
    events_process_task.delay()
    wait_for(lambda: _paid_count(order_ids) == 1, 30, 0.3)

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE application_name = %s", ["reconnect-worker"])
        (terminated,) = cursor.fetchone()
    assert terminated == 1
    offset = len(worker.log_text())
    events_sweep_task.delay()
    worker.wait_log("events_sweep_task[", timeout=30, start_at=offset)
    wait_for(lambda: "succeeded" in worker.log_text()[offset:]
             or "gave up" in worker.log_text()[offset:], 30, 0.1)
    for params in returns[1:]:
        event_store.event_insert(source=PaymentEvent.Source.RETURN, params=params)
    events_process_task.delay()

    wait_for(lambda: _paid_count(order_ids) == 4, 30, 0.3)
    _assert_each_paid_once(order_ids)
