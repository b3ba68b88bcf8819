"""Prometheus metrics from the real processes: the Procfile's web (gunicorn, two uvicorn
workers) and a `celery worker` with prefork children, after real payments, refusals, a
rejected event, a gateway error, reconciliation and a bill, scraped over HTTP and read with
prometheus_client's own parser."""
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from alipay_sandbox.client import SandboxControl
from payment import gateway
from payment.models import BillReport, Payment, PaymentEvent, Refund
from payment.tasks import bill_reconcile_task, events_process_task, reconcile_dispatch_task
from shop.models import OrderInfo
from tests.factories import OrderFactory, UserFactory, signed_in
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    ShopClient,
    free_port,
    process_fixture,
    procfile_command,
    query_params,
    sign_params,
    wait_for,
    wait_for_port,
)

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("beat_paused")]

TOKEN = "scrape-token-0123456789abcdef"
# Loopback is not among them: the test reaches both endpoints by token or through a proxy.
NETWORKS = "10.0.0.0/8"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@process_fixture
def metrics_web(worker_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "RETURN_WAIT_SECONDS": "5",
           "ALIPAY_NOTIFY_URL": f"{base}/payment/alipay/notify/",
           "ALIPAY_RETURN_URL": f"{base}/pay_success.html",
           "METRICS_TOKEN": TOKEN, "METRICS_ALLOWED_NETWORKS": NETWORKS}
    web = ManagedProcess("metrics-web", procfile_command("web"), env, log_dir).start()
    try:
        wait_for_port(port)
        yield base
    finally:
        web.stop()


def _scrape(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=10)


def _samples(url: str) -> Samples:
    response = _scrape(url, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _samples_counting(url: str, name: str, **labels: str) -> Samples | None:
    """The samples once `name` with these labels is above zero, else None."""
    samples = _samples(url)
    return samples if _value(samples, name, **labels) > 0 else None


def _signed_notification(order_id: str, amount: str, key: Path) -> dict[str, str]:
    return sign_params({
        "notify_type": "trade_status_sync", "notify_id": f"metrics-{order_id}",
        "notify_time": gateway.beijing_time(timezone.now()), "app_id": APP_ID,
        "out_trade_no": order_id, "trade_no": f"2026112622{order_id[-18:]}",
        "trade_status": "TRADE_SUCCESS", "total_amount": amount, "seller_id": SELLER_ID,
    }, key.read_bytes())


def test_web_and_worker_count_payments_refusals_reconciliation_and_gateway_errors(
    metrics_web: str, exclusive_workers: Any, sandbox: SandboxControl, dev_keys: Path,
) -> None:
    worker_port = free_port()
    exclusive_workers("metrics-worker", concurrency=2, WORKER_METRICS_PORT=str(worker_port),
                      METRICS_TOKEN=TOKEN, METRICS_ALLOWED_NETWORKS=NETWORKS)
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    web_metrics = f"{metrics_web}/metrics"
    buyer = UserFactory()
    shop = signed_in(ShopClient(metrics_web), buyer)
    orders = [order.order_id for order in OrderFactory.create_batch(
        3, user=buyer, total_amount=Decimal("12.30"))]
    paid_order, rejected_order, reconciled_order = orders

    # A real payment: the sandbox notifies the web, a worker applies it, the buyer returns.
    paid = sandbox.pay(shop.pay_link(paid_order).json()["alipay_url"])
    wait_for(lambda: Payment.objects.filter(order_id=paid_order).exists(), 20)
    returned = shop.put_status(query_params(paid["return_url"]))
    assert returned.status_code == 200, returned.text

    # Refused at the intake: a return signed with another key, a notification that is none.
    forged = dict(query_params(paid["return_url"]))
    forged = sign_params(forged, (dev_keys / "app_private_key.pem").read_bytes())
    assert shop.put_status(forged).status_code == 403
    assert requests.post(f"{metrics_web}/payment/alipay/notify/", data={"a": "b"},
                         timeout=10).status_code == 400
    # Alipay's signature, the wrong amount: stored, then rejected by a worker.
    note = _signed_notification(rejected_order, "1.00", dev_keys / "alipay_private_key.pem")
    assert requests.post(f"{metrics_web}/payment/alipay/notify/", data=note,
                         timeout=10).text == "success"
    wait_for(lambda: PaymentEvent.objects.filter(
        order_id=rejected_order, state=PaymentEvent.State.REJECTED).exists(), 20)

    # Paid at Alipay, never told: reconciliation asks, the gateway fails once, then it pays.
    sandbox.set_faults(notify_drop=True)
    sandbox.pay(shop.pay_link(reconciled_order).json()["alipay_url"])
    sandbox.set_faults(error_rate=1, error_kind="20000", methods=["alipay.trade.query"])
    time.sleep(2.5)  # RECONCILE_AFTER_SECONDS
    reconcile_dispatch_task.delay()
    wait_for(lambda: _samples_counting(worker_metrics, "shop_reconcile_checks_total",
                                       outcome="error"), 20)
    sandbox.clear_faults()

    def reconciled() -> bool:
        reconcile_dispatch_task.delay()
        time.sleep(0.5)
        return OrderInfo.objects.get(order_id=reconciled_order).status == OrderInfo.Status.UNSEND

    wait_for(reconciled, 30, 0.5)

    # The day's bill, with a trade this shop never heard of.
    today = timezone.now().astimezone(gateway.BEIJING).date()
    sandbox.generate_trades(today.isoformat(), 1)
    sandbox.set_faults(notify_drop=True)  # no TRADE_FINISHED notifications when time jumps
    sandbox.set_settings(clock_offset_s=86400)  # at Alipay it is tomorrow: today's bill is out
    bill_reconcile_task.delay(today.isoformat())
    wait_for(lambda: BillReport.objects.filter(bill_date=today,
                                               state=BillReport.State.DONE).exists(), 30)

    # An event out of attempts: the next worker to claim it gives up on it.
    PaymentEvent.objects.create(
        source="notify", dedupe_key="metrics-exhausted", raw_data={}, out_trade_no=orders[1],
        attempts=settings.PAYMENT_EVENT_MAX_ATTEMPTS, next_attempt_at=timezone.now())
    events_process_task.delay()
    wait_for(lambda: PaymentEvent.objects.filter(dedupe_key="metrics-exhausted",
                                                 state=PaymentEvent.State.DEAD).exists(), 20)
    web = _samples(web_metrics)
    worker = wait_for(lambda: _samples_counting(worker_metrics, "shop_bill_reconciliations_total",
                                                state="done"), 10)

    # The web: what arrived, by source and outcome; lags; the database's and broker's gauges.
    assert _value(web, "shop_payment_events_received_total", source="notify",
                  outcome="stored") >= 2
    assert _value(web, "shop_payment_events_received_total", source="return",
                  outcome="duplicate") == 1  # the buyer's return, answered from the payment
    assert _value(web, "shop_payment_events_received_total", source="return",
                  outcome="refused") == 1
    assert _value(web, "shop_payment_events_received_total", source="notify",
                  outcome="refused") == 1
    assert _value(web, "shop_payment_notify_lag_seconds_count") >= 2
    assert _value(web, "shop_payment_events_waiting") == 0
    assert _value(web, "shop_payment_events_dead") == 1
    assert _value(web, "shop_refunds_in_ledger", state="succeeded") == Refund.objects.filter(
        state=Refund.State.SUCCEEDED).count()
    assert ("shop_celery_queue_messages", frozenset({("queue", "payments")})) in web
    assert ("shop_celery_queue_messages", frozenset({("queue", "reconcile")})) in web
    assert _value(web, "shop_metrics_source_up", source="database") == 1
    assert _value(web, "shop_metrics_source_up", source="broker") == 1
    # Pay links are signed on the web: no gateway call there.
    assert not any(name.startswith("shop_alipay_errors") for name, _ in web)

    # The worker: what it settled and how long paying took, reconciliation, the bill, and
    # the gateway's calls and errors.
    assert _value(worker, "shop_payment_events_processed_total", source="notify",
                  outcome="applied") >= 1
    assert _value(worker, "shop_payment_events_processed_total", source="notify",
                  outcome="rejected") == 1
    assert _value(worker, "shop_payment_events_processed_total", source="notify",
                  outcome="dead") == 1
    assert _value(worker, "shop_payment_events_processed_total", source="query",
                  outcome="applied") == 1
    assert _value(worker, "shop_payment_events_received_total", source="query",
                  outcome="stored") == 1
    assert _value(worker, "shop_payment_events_processed_total", source="bill",
                  outcome="rejected") == 1  # the bill's stranger is no order of ours
    assert _value(worker, "shop_payment_time_to_paid_seconds_count") == 2
    assert _value(worker, "shop_payment_event_to_applied_seconds_count", source="notify") >= 1
    assert _value(worker, "shop_reconcile_checks_total", outcome="error") >= 1
    assert _value(worker, "shop_reconcile_checks_total", outcome="applied") == 1
    assert _value(worker, "shop_reconcile_batch_duration_seconds_count") >= 2
    assert _value(worker, "shop_alipay_errors_total", method="alipay.trade.query",
                  code="20000", sub_code="isp.unknow-error") >= 1
    assert _value(worker, "shop_alipay_request_duration_seconds_count",
                  method="alipay.trade.query") >= 3
    assert _value(worker, "shop_alipay_request_duration_seconds_count",
                  method="alipay.data.dataservice.bill.downloadurl.query") == 1
    assert _value(worker, "shop_alipay_request_duration_seconds_count",
                  method="bill.download") == 1
    assert _value(worker, "shop_bill_reconciliations_total", state="done") == 1
    assert _value(worker, "shop_bill_findings_total", outcome="missing_here") == 1
    # No sample is labelled with an order, trade or event id.
    for samples in (web, worker):
        for _name, labels in samples:
            for _label, value in labels:
                assert not any(order in value for order in orders)
                assert paid["trade_no"] not in value


def test_metrics_answer_only_allowed_networks_or_the_token(
    metrics_web: str, exclusive_workers: Any,
) -> None:
    worker_port = free_port()
    exclusive_workers("guarded-worker", concurrency=1, WORKER_METRICS_PORT=str(worker_port),
                      METRICS_TOKEN=TOKEN, METRICS_ALLOWED_NETWORKS=NETWORKS)
    for url in (f"{metrics_web}/metrics", f"http://127.0.0.1:{worker_port}/metrics"):
        assert _scrape(url).status_code == 403
        assert _scrape(url, Authorization="Bearer wrong-token").status_code == 403
        assert _scrape(url, Authorization=f"Basic {TOKEN}").status_code == 403
        allowed = _scrape(url, Authorization=f"Bearer {TOKEN}")
        assert allowed.status_code == 200
        assert list(text_string_to_metric_families(allowed.text)) is not None
    # Behind the proxy (127.0.0.1 is trusted for X-Forwarded-For) the client's own address
    # counts: one inside the allowed networks may scrape, one outside may not.
    web = f"{metrics_web}/metrics"
    assert _scrape(web, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 200
    assert _scrape(web, **{"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    assert requests.post(web, timeout=10).status_code == 405


def test_the_web_answers_metrics_without_django_host_or_https_checks(
    worker_env: dict[str, str], log_dir: Path, dev_keys: Path,
) -> None:
    """Prometheus asks by address over plain HTTP: production's allowed hosts and HTTPS
    redirect must not stand in its way (they apply to every other page)."""
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "DJANGO_ENV": "production",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
           "DJANGO_ALLOWED_HOSTS": "shop.example.com", "ALIPAY_SELLER_ID": SELLER_ID}
    web = ManagedProcess("metrics-production-web", procfile_command("web"), env,
                         log_dir).start()
    try:
        wait_for_port(port)
        page = requests.get(f"http://127.0.0.1:{port}/skus/", allow_redirects=False,
                            timeout=10)
        scrape = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        web.stop()
    assert page.status_code == 400  # 127.0.0.1 is not an allowed host
    assert scrape.status_code == 200, scrape.text
    names = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {"shop_payment_events_waiting", "shop_metrics_source_up"} <= names
    assert urllib.parse.urlsplit(scrape.url).path == "/metrics"

