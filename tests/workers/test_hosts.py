"""More than one host: two worker hosts (separate `celery worker` processes, their own node
names and concurrency) and two web processes (the Procfile's web command on two ports) share
one PostgreSQL and one broker. 600 payments arrive over both webs, each as a notification to
one web and a return to the other; one worker host is killed in the middle; every payment is
applied once."""
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from alipay_sandbox.client import SandboxControl
from payment.models import Payment, PaymentEvent
from tests.support import (
    ManagedProcess,
    free_port,
    process_fixture,
    procfile_command,
    wait_for,
    wait_for_port,
)
from tests.workers.test_faults import _assert_each_paid_once, _orders_with_links, _paid_count

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_beat"),  # its sweeper wakes the survivor after the kill
]

PAYMENTS = 600  # enough for both hosts and both webs to be busy when one host dies


@process_fixture
def two_webs(
    worker_env: dict[str, str], log_dir: Path
) -> Iterator[dict[str, ManagedProcess]]:
    """Two web processes, by base URL."""
    webs = {}
    for number in (1, 2):
        port = free_port()
        env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
               "RETURN_WAIT_SECONDS": "2"}
        webs[f"http://127.0.0.1:{port}"] = ManagedProcess(
            f"host-web-{number}-{port}", procfile_command("web"), env, log_dir).start()
    for url in webs:
        wait_for_port(int(url.rsplit(":", 1)[1]))
    yield webs
    for web in webs.values():
        web.stop()


def _return_params(return_url: str) -> str:
    # Every parameter, empty ones too, as the browser sends them back.
    return urllib.parse.urlsplit(return_url).query


def test_two_worker_hosts_and_two_webs_apply_600_payments_once_with_a_host_killed(
    sandbox: SandboxControl, exclusive_workers: Any, two_webs: dict[str, ManagedProcess],
    settings: Any,
) -> None:
    first_web, second_web = two_webs
    doomed = exclusive_workers("host-a", concurrency=3, PAYMENT_BATCH_SIZE="50")
    survivor = exclusive_workers("host-b", concurrency=2, PAYMENT_BATCH_SIZE="50")

    # Half the pay links have Alipay notify the first web, the other half the second; each
    # buyer comes back through the other web.
    routes: list[tuple[str, str, str]] = []  # (order_id, pay link, web the return goes to)
    for notified, returned in ((first_web, second_web), (second_web, first_web)):
        settings.ALIPAY_NOTIFY_URL = f"{notified}/payment/alipay/notify/"
        routes += [(order_id, link, returned)
                   for order_id, link in _orders_with_links(PAYMENTS // 2)]
    routes = routes[0::2] + routes[1::2]  # interleaved: both webs busy from the start
    order_ids = [order_id for order_id, _, _ in routes]

    answers: Counter[int] = Counter()
    lock = threading.Lock()

    def pay_and_return(route: tuple[str, str, str]) -> None:
        _, link, web = route
        paid = sandbox.pay(link)  # Alipay notifies the other web on its own
        status = requests.put(f"{web}/payment/status/?{_return_params(paid['return_url'])}",
                              timeout=30).status_code
        with lock:
            answers[status] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        sending = pool.map(pay_and_return, routes)
        wait_for(lambda: _paid_count(order_ids) >= PAYMENTS * 3 // 10, 120, 0.05)
        doomed.kill()  # SIGKILL to the host's process group: the main process and its pool
        paid_at_kill = _paid_count(order_ids)
        list(sending)
    wait_for(lambda: _paid_count(order_ids) == PAYMENTS, 120, 0.5)
    elapsed = time.monotonic() - started

    # Nothing of Alipay's is still on its way or waiting: every notification delivered, every
    # stored event settled.
    ours = set(order_ids)

    def delivered() -> bool:
        notes = [n for n in sandbox.notifications() if n["out_trade_no"] in ours]
        return len(notes) == PAYMENTS and all(n["state"] == "delivered" for n in notes)

    wait_for(delivered, 60, 0.5)
    events = PaymentEvent.objects.filter(out_trade_no__in=order_ids)
    wait_for(lambda: not events.filter(state="received").exists(), 60, 0.5)

    assert paid_at_kill < PAYMENTS, "the host was killed after all was done"
    assert set(answers) <= {200, 202}, answers  # applied, or still processing: never an error
    assert sum(answers.values()) == PAYMENTS
    _assert_each_paid_once(order_ids)
    assert Payment.objects.filter(order_id__in=order_ids).count() == PAYMENTS
    assert set(events.values_list("state", flat=True)) <= {"applied", "recorded"}
    assert set(events.values_list("source", flat=True)) >= {"notify", "return"}
    # Both hosts worked, both webs took notifications and returns.
    for host in (doomed, survivor):
        assert "events_process_task" in host.log_text() and "succeeded" in host.log_text()
    for web in two_webs.values():
        log = web.log_text()
        assert '"POST /payment/alipay/notify/' in log and '"PUT /payment/status/' in log
    print(f"{PAYMENTS} payments in {elapsed:.1f} s, {paid_at_kill} paid at the kill, "
          f"answers {dict(answers)}, {events.filter(attempts__gt=1).count()} events taken again")
