"""A deploy stops a worker with SIGTERM: the Procfile's worker shuts down softly. What it is
doing either finishes within CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT and is acknowledged, or is
stopped, rolled back and handed back to the queue at once; every payment is applied once.
On Redis and on RabbitMQ, with real PostgreSQL, `celery worker` processes and no beat."""
import os
import signal
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from payment import event_store
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo, User
from tests.support import APP_ID, SELLER_ID, ManagedProcess, procfile_command, sign_params, wait_for
from tests.workers.brokers import BrokerUnderTest, RabbitMQNode

pytestmark = pytest.mark.django_db(transaction=True)

SOFT_SHUTDOWN = 4


def _notified_orders(user: User, prefix: str, count: int, key: bytes) -> list[str]:
    """Orders with a verified-to-be notification each, stored as the intake stores them."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    order_ids = [f"{stamp}{prefix}{i:04d}{user.pk:09d}" for i in range(count)]
    OrderInfo.objects.bulk_create(OrderInfo(order_id=order_id, user=user,
                                            total_amount=Decimal("5.55"))
                                  for order_id in order_ids)
    for order_id in order_ids:
        event_store.event_insert(source=PaymentEvent.Source.NOTIFY, params=sign_params({
            "notify_type": "trade_status_sync", "notify_id": f"deploy-{order_id}",
            "app_id": APP_ID, "out_trade_no": order_id, "trade_no": f"T{order_id}",
            "trade_status": "TRADE_SUCCESS", "total_amount": "5.55", "seller_id": SELLER_ID,
        }, key))
    return order_ids


def _event_ids(order_ids: list[str]) -> list[int]:
    return list(PaymentEvent.objects.filter(out_trade_no__in=order_ids)
                .values_list("id", flat=True))


def _hold_trade_no(user: User, trade_no: str) -> psycopg.Connection:
    """An uncommitted payment of another order with this trade_no: a batch that inserts the
    same trade_no waits for this transaction, inside its own."""
    elsewhere = OrderInfo.objects.create(order_id=f"X{time.time_ns()}", user=user,
                                         total_amount=Decimal("5.55"))
    db = connection.settings_dict
    holder = psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                             user=db["USER"], dbname=db["NAME"])
    holder.execute(
        "INSERT INTO payment_payment (order_id, trade_id, amount, source, status, "
        "refund_request_no, note, created_at) VALUES (%s, %s, 5.55, 'notify', 'applied', "
        "'', '', now())", [elsewhere.order_id, trade_no])
    return holder


def _batches_waiting() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO \"payment_payment\"%%'"
        )
        return int(cursor.fetchone()[0])


def _states(order_ids: list[str]) -> set[tuple[str, int]]:
    return set(PaymentEvent.objects.filter(out_trade_no__in=order_ids)
               .values_list("state", "attempts"))


def _assert_each_paid_once(order_ids: list[str]) -> None:
    per_order = (Payment.objects.filter(order_id__in=order_ids).values("order_id")
                 .annotate(n=Count("id")))
    assert len(per_order) == len(order_ids)
    assert {row["n"] for row in per_order} == {1}
    assert not OrderInfo.objects.filter(order_id__in=order_ids).exclude(
        status=OrderInfo.Status.UNSEND).exists()


def test_sigterm_finishes_a_short_batch_and_hands_back_a_long_one(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, exclusive_workers: Any,
    worker_env: dict[str, str], log_dir: Path, dev_keys: Path,
) -> None:
    if broker.kind == "redis":
        request.getfixturevalue("beat_paused")  # no sweeper: only the queue's messages work
    key = (dev_keys / "alipay_private_key.pem").read_bytes()
    user = User.objects.create_user(username=f"deploy{time.time_ns()}", password="x" * 12)
    short = _notified_orders(user, "1", 30, key)
    long = _notified_orders(user, "2", 30, key)
    short_holder = _hold_trade_no(user, f"T{short[-1]}")
    long_holder = _hold_trade_no(user, f"T{long[-1]}")
    # Wake-ups and beat's runs left by earlier tests would take both sets in one batch.
    for queue in ("payments", "reconcile"):
        broker.purge(queue)
    # The Procfile's worker, as a deploy runs it; its two processes each take a batch.
    env = {**worker_env, **broker.env, "WORKER_CONCURRENCY": "2",
           "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": str(SOFT_SHUTDOWN)}
    worker = ManagedProcess(f"deployed-{broker.kind}", procfile_command("worker"), env, log_dir)
    try:
        worker.start().wait_log("ready.", timeout=60)
        queued_before = broker.queued()
        broker.wake(_event_ids(short))
        broker.wake(_event_ids(long))
        wait_for(lambda: _batches_waiting() == 2, 30, 0.05)

        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)  # to the main process only, as docker stop does
        stopped_at = time.monotonic()
        # The short batch may go on a second later; the long one outlasts the soft shutdown.
        threading.Timer(1.0, short_holder.rollback).start()
        worker.proc.wait(SOFT_SHUTDOWN + 15)
        took = time.monotonic() - stopped_at
    finally:
        worker.kill()
        for holder in (short_holder, long_holder):
            holder.rollback()
            holder.close()

    assert SOFT_SHUTDOWN <= took < SOFT_SHUTDOWN + 15
    # The short batch finished and was acknowledged: applied by its one attempt.
    _assert_each_paid_once(short)
    assert _states(short) == {("applied", 1)}
    # The long one was stopped inside its transaction: nothing of it applied...
    assert not Payment.objects.filter(order_id__in=long).exists()
    assert _states(long) == {("received", 1)}
    # ...and its message is back in the queue at once, the short one's is not.
    assert broker.queued() == queued_before + 1

    # After its claim's lease, the next worker does it from that message alone (no beat).
    lease_end = max(PaymentEvent.objects.filter(out_trade_no__in=long)
                    .values_list("next_attempt_at", flat=True))
    wait_for(lambda: timezone.now() > lease_end, 30, 0.1)
    exclusive_workers(f"next-{broker.kind}", concurrency=2, **broker.env)
    wait_for(lambda: Payment.objects.filter(order_id__in=long).count() == 30, 60, 0.2)
    _assert_each_paid_once(long)
    assert _states(long) == {("applied", 2)}
    assert _states(short) == {("applied", 1)}


def test_sigterm_stops_an_idle_worker_at_once_and_hands_back_the_countdown_it_holds(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, exclusive_workers: Any,
    worker_env: dict[str, str], log_dir: Path,
) -> None:
    """Idle, the Procfile's worker does not sit out its soft shutdown: it stops within honcho's
    5 s grace. On Redis a countdown waits in the worker, and is back in the queue after."""
    if broker.kind == "redis":
        request.getfixturevalue("beat_paused")  # idle: no sweeper runs meanwhile
    broker.purge("payments")
    broker.purge("reconcile")
    env = {**worker_env, **broker.env, "WORKER_CONCURRENCY": "2"}  # the soft shutdown's 8 s
    worker = ManagedProcess(f"idle-{broker.kind}", procfile_command("worker"), env, log_dir)
    try:
        worker.start().wait_log("ready.", timeout=60)
        broker.wake([], countdown=300)  # no events: when it runs, it changes nothing
        if broker.kind == "redis":
            worker.wait_log("events_process_task", timeout=30)
            wait_for(lambda: broker.queued() == 0, 10, 0.1)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGTERM)  # its whole group, as honcho does
        stopped_at = time.monotonic()
        worker.proc.wait(30)
        took = time.monotonic() - stopped_at
        if broker.kind == "redis":
            assert broker.queued() == 1
    finally:
        worker.kill()
        broker.purge("payments")

    assert took < 5, f"{took:.1f} s"
    assert "Soft Shutdown" not in worker.log_text()
    assert not [line for line in worker.log_text().splitlines()
                if " ERROR " in line or "Traceback" in line]


STOPS = 6


def test_sigterm_as_a_message_arrives_never_hangs_a_rabbitmq_worker(
    rabbitmq_node: RabbitMQNode, worker_env: dict[str, str], log_dir: Path,
) -> None:
    """A SIGTERM that lands while the worker reads a delivery: Celery's own handler cancelled
    the consumer on that connection from inside the signal handler, and the worker then waited
    for ever on a reply it had already read (8 hangs in 20 stops before workers/shutdown.py).
    Each stop here ends within honcho's grace, and the message is back in the queue."""
    broker = BrokerUnderTest.rabbitmq(rabbitmq_node)
    env = {**worker_env, **broker.env, "WORKER_CONCURRENCY": "2"}
    took = []
    for stop in range(STOPS):
        broker.purge("payments")
        worker = ManagedProcess(f"arriving-{stop}", procfile_command("worker"), env, log_dir)
        try:
            worker.start().wait_log("ready.", timeout=60)
            broker.wake([], countdown=300)  # delivered as the signal lands
            assert worker.proc is not None
            os.killpg(worker.proc.pid, signal.SIGTERM)
            stopped_at = time.monotonic()
            try:
                worker.proc.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"stop {stop + 1} of {STOPS}: the worker still runs 15 s after SIGTERM")
            took.append(time.monotonic() - stopped_at)
            wait_for(lambda: broker.queued() == 1, 10, 0.1)
        finally:
            worker.kill()
            broker.purge("payments")
        assert "Cold shutdown" in worker.log_text()
        assert not [line for line in worker.log_text().splitlines()
                    if " ERROR " in line or "Traceback" in line]
    assert max(took) < 5, [f"{t:.1f} s" for t in took]


def test_sigterm_stops_a_rabbitmq_worker_whose_broker_is_away(
    worker_env: dict[str, str], log_dir: Path, tmp_path: Path,
) -> None:
    """Reconnecting, the worker's event loop does not run: the alarm a second after the signal
    runs Celery's handler, and the worker stops between two connection attempts."""
    (tmp_path / "node").mkdir()
    node = RabbitMQNode(tmp_path / "node", log_dir, name="away-rabbitmq").start()
    env = {**worker_env, **BrokerUnderTest.rabbitmq(node).env, "WORKER_CONCURRENCY": "2"}
    worker = ManagedProcess("broker-away", procfile_command("worker"), env, log_dir)
    try:
        worker.start().wait_log("ready.", timeout=60)
        node.stop()
        worker.wait_log("Cannot connect to amqp", timeout=30)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        worker.proc.wait(30)
        took = time.monotonic() - stopped_at
    finally:
        worker.kill()
        node.kill()
    assert took < 5, f"{took:.1f} s"
    assert "Cold shutdown" in worker.log_text()
