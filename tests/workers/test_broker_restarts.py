"""A broker that restarts under payment traffic costs a warning and a reconnect, never a process:
the Procfile's web, workers and beat under honcho (which stops every process when one exits)
keep their process ids through five Redis restarts, emptied or not, and the workers through
three restarts of a RabbitMQ node. Every paid order is applied once; wake-ups that Redis lost
are found by the sweeper.
"""
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db.models import Count

from alipay_sandbox.client import SandboxControl
from payment import event_store
from payment.models import Payment, PaymentEvent
from shop.models import OrderInfo, User
from tests.factories import orders_with_links
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    procfile_command,
    query_params,
    sign_params,
    wait_for,
    wait_for_port,
)
from tests.workers.brokers import BrokerUnderTest, PrivateRedis, RabbitMQNode

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_RESTARTS = 5
RABBITMQ_RESTARTS = 3
# A record at ERROR or above, in the text format (`<time> ERROR <logger> ...`), or a traceback.
SEVERE = re.compile(r"\s(ERROR|CRITICAL)\s|Traceback|Unrecoverable")
# A worker's cold shutdown run from the signal handler: its event loop did not take the signal.
TAKEN_BY_THE_ALARM = "the event loop did not take the signal"
# honcho: `<time> system | worker.1 started (pid=1234)`.
STARTED = re.compile(r"system\s*\| (\S+) started \(pid=(\d+)\)")


def _severe_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if SEVERE.search(line)]


def _event_ids(order_ids: list[str]) -> list[int]:
    return list(PaymentEvent.objects.filter(out_trade_no__in=order_ids)
                .values_list("id", flat=True))


def _paid_count(order_ids: list[str]) -> int:
    return OrderInfo.objects.filter(order_id__in=order_ids,
                                    status=OrderInfo.Status.UNSEND).count()


def _assert_each_paid_once(order_ids: list[str]) -> None:
    assert not OrderInfo.objects.filter(order_id__in=order_ids).exclude(
        status=OrderInfo.Status.UNSEND).exists()
    per_order = (Payment.objects.filter(order_id__in=order_ids).values("order_id")
                 .annotate(n=Count("id")))
    assert len(per_order) == len(order_ids)
    assert {row["n"] for row in per_order} == {1}
    assert not PaymentEvent.objects.filter(out_trade_no__in=order_ids,
                                           state__in=["rejected", "dead"]).exists()


class Buyers:
    """Buyers paying orders at the sandbox (Alipay notifies the web) and coming back to the
    shop (the return, which waits for the outcome), a few at a time, until stopped."""

    def __init__(self, sandbox: SandboxControl, web: str, links: list[tuple[str, str]]) -> None:
        self.sandbox = sandbox
        self.web = web
        self.links = links
        self.answers: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Buyers":
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the buyers did not finish"

    def _run(self) -> None:
        with ThreadPoolExecutor(3) as pool:
            self.answers = list(pool.map(self._pay, self.links))

    def _pay(self, link: tuple[str, str]) -> int:
        paid = self.sandbox.pay(link[1])
        time.sleep(0.05)
        response = requests.put(f"{self.web}/payment/status/",
                                params=query_params(paid["return_url"]), timeout=30)
        return response.status_code


def _reconnected(output: str, workers: tuple[str, ...] = ("worker.1", "worker.2")) -> bool:
    """Whether each worker's last word on its broker connection in `output` is "Connected"."""
    for name in workers:
        said = re.findall(rf"{re.escape(name)}\s*\| .* (Connection to broker lost|Connected to)",
                          output)
        if not said or said[-1] != "Connected to":
            return False
    return True


def _honcho_env(worker_env: dict[str, str], redis_url: str, web_port: int,
                tmp_path: Path) -> dict[str, str]:
    """The Procfile's processes on a Redis of the test's own, as broker and as the web's and
    workers' Redis (waits, throttles, wake-ups, beat's lock)."""
    bin_dir = Path(sys.executable).parent
    web = f"http://127.0.0.1:{web_port}"
    return {
        **worker_env,
        "PATH": f"{bin_dir}:{worker_env.get('PATH', '')}",
        "CELERY_BROKER_URL": redis_url,
        "PAYMENT_REDIS_URL": redis_url,
        "CELERY_BEAT_REDIS_URL": redis_url,
        "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "celerybeat-schedule"),
        "WEB_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "1",
        "WORKER_CONCURRENCY": "2",
        "RETURN_WAIT_SECONDS": "3",
        "ORDER_MAX_UNPAID": "100000",
        "ALIPAY_RETURN_URL": f"{web}/pay_success.html",
        "ALIPAY_NOTIFY_URL": f"{web}/payment/alipay/notify/",
    }


@pytest.fixture
def private_redis(tmp_path: Path, log_dir: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis", log_dir, name=f"restarted-redis-{free_port()}")
    redis.directory.mkdir()
    yield redis.start()
    redis.kill()


def test_redis_restarts_under_payment_traffic_keep_every_process_and_pay_each_order_once(
    sandbox: SandboxControl, private_redis: PrivateRedis, worker_env: dict[str, str],
    log_dir: Path, tmp_path: Path, settings: Any,
) -> None:
    web_port = free_port()
    web = f"http://127.0.0.1:{web_port}"
    env = _honcho_env(worker_env, private_redis.url, web_port, tmp_path)
    honcho = ManagedProcess(
        f"honcho-redis-restarts-{web_port}",
        [str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile",
         "-c", "worker=2", "web", "worker", "beat"], env, log_dir)
    settings.ALIPAY_NOTIFY_URL = f"{web}/payment/alipay/notify/"
    settings.ALIPAY_RETURN_URL = f"{web}/pay_success.html"
    links = [(order.order_id, url)
             for order, url in orders_with_links(70, total_amount=Decimal("12.30"))]
    order_ids = [order_id for order_id, _ in links]
    honcho.start()
    try:
        wait_for(lambda: honcho.log_text().count(" ready.") == 2, 90, 0.2)
        honcho.wait_log("beat: Starting", timeout=30)
        wait_for_port(web_port, timeout=60)
        started = dict(STARTED.findall(honcho.log_text()))
        assert set(started) == {"web.1", "worker.1", "worker.2", "beat.1"}, started

        # Retries waiting in the workers (countdowns: delivered, not yet acknowledged), as a
        # worker holds them when Alipay is slow; empty ones, they change nothing when they run.
        for _ in range(4):
            BrokerUnderTest("redis", private_redis.url).wake([], countdown=120)
        buyers = Buyers(sandbox, web, links[:60]).start()
        for restart in range(REDIS_RESTARTS):
            time.sleep(1.0)
            restarted_at = len(honcho.log_text())
            # Away for as long as beat's loop sleeps at most; every other time back empty,
            # without the wake-ups, beat's lock and its schedule.
            private_redis.restart(empty=restart % 2 == 0, down_for=1.0)
        buyers.join(120)

        # Each worker is back on Redis, and the stack goes on paying orders.
        wait_for(lambda: _reconnected(honcho.log_text()[restarted_at:]), 30, 0.2)
        last = Buyers(sandbox, web, links[60:]).start()
        last.join(60)
        wait_for(lambda: _paid_count(order_ids) == len(order_ids), 60, 0.3)
        _assert_each_paid_once(order_ids)
        assert set(buyers.answers + last.answers) <= {200, 202}, buyers.answers + last.answers

        # honcho stops the whole stack when one process exits: it still runs every one.
        assert honcho.proc is not None and honcho.proc.poll() is None, honcho.log_text()[-5000:]
        assert dict(STARTED.findall(honcho.log_text())) == started
        assert " exited with code" not in honcho.log_text()
    finally:
        honcho.stop(timeout=20)
    output = honcho.log_text()
    assert TAKEN_BY_THE_ALARM not in output  # honcho's SIGTERM, taken by the workers' loops
    # Each restart was seen (a worker still reconnecting may see two as one outage).
    assert output.count("Connection to broker lost") >= REDIS_RESTARTS, output[-5000:]
    assert not _severe_lines(output), "\n".join(_severe_lines(output))


def _notified_orders(count: int, key: bytes) -> list[str]:
    """Orders each with a signed notification, stored as the intake stores them."""
    user = User.objects.create_user(username=f"restarts{time.time_ns()}", password="x" * 12)
    orders = [OrderInfo(order_id=f"{time.time_ns()}{i:04d}", user=user,
                        total_amount=Decimal("6.60")) for i in range(count)]
    OrderInfo.objects.bulk_create(orders)
    for order in orders:
        event_store.event_insert(source=PaymentEvent.Source.NOTIFY, params=sign_params({
            "notify_type": "trade_status_sync", "notify_id": f"restart-{order.order_id}",
            "app_id": APP_ID, "out_trade_no": order.order_id, "trade_no": f"T{order.order_id}",
            "trade_status": "TRADE_SUCCESS", "total_amount": "6.60", "seller_id": SELLER_ID,
        }, key))
    return [order.order_id for order in orders]


def test_rabbitmq_node_restarts_under_payment_traffic_keep_the_worker_and_beat(
    rabbitmq_node: RabbitMQNode, worker_env: dict[str, str], log_dir: Path, dev_keys: Path,
    tmp_path: Path,
) -> None:
    broker = BrokerUnderTest.rabbitmq(rabbitmq_node)
    for queue in ("payments", "reconcile"):
        broker.purge(queue)
    key = (dev_keys / "alipay_private_key.pem").read_bytes()
    env = {**worker_env, **broker.env, "WORKER_CONCURRENCY": "2",
           "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "celerybeat-schedule")}
    worker = ManagedProcess(f"restarts-worker-{rabbitmq_node.port}", procfile_command("worker"),
                            env, log_dir)
    beat = ManagedProcess(f"restarts-beat-{rabbitmq_node.port}", procfile_command("beat"),
                          env, log_dir)
    order_ids: list[str] = []
    try:
        worker.start().wait_log("ready.", timeout=60)
        beat.start().wait_log("beat: Starting", timeout=60)
        pids = (worker.pid, beat.pid)
        for _ in range(RABBITMQ_RESTARTS):
            batch = _notified_orders(20, key)
            order_ids += batch
            broker.wake(_event_ids(batch))
            time.sleep(0.3)  # the worker holds some of them as the node goes
            offset = len(worker.log_text())
            rabbitmq_node.stop()
            rabbitmq_node.start()
            worker.wait_log("Connected to amqp", timeout=30, start_at=offset)
        order_ids += _notified_orders(20, key)  # woken by beat's sweeper alone

        wait_for(lambda: _paid_count(order_ids) == len(order_ids), 90, 0.3)
        _assert_each_paid_once(order_ids)
        for process in (worker, beat):
            assert process.proc is not None and process.proc.poll() is None, \
                process.log_text()[-5000:]
        assert (worker.pid, beat.pid) == pids
        # A deploy's SIGTERM after the reconnects: still taken by the event loop, between two
        # reads of the connection (workers/shutdown.py), not from the signal handler.
        os.killpg(worker.pid, signal.SIGTERM)
        worker.proc.wait(15)
    finally:
        worker.stop()
        beat.stop()
    assert "Cold shutdown" in worker.log_text()
    assert TAKEN_BY_THE_ALARM not in worker.log_text()
    assert worker.log_text().count("Connection to broker lost") >= RABBITMQ_RESTARTS
    for process in (worker, beat):
        assert not _severe_lines(process.log_text()), "\n".join(
            _severe_lines(process.log_text()))
