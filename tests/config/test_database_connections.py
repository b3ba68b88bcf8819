"""Pooled database connections the server ended (a restart, a failover, an idle timeout, an
operator's pg_terminate_backend) are found out before a request is given one: the Procfile's
web answers as before, on Django's pages and on the intake's own pool alike."""
import secrets
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.conftest import ASGI_WEB_APPLICATION_NAME
from tests.support import APP_ID, SELLER_ID, sign_params

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 12


def _notification(dev_keys: Path) -> str:
    """A notification Alipay signed, for an order of its own: stored, answered `success`."""
    order_id = f"2026120700{secrets.randbelow(10**20):020d}"
    params = sign_params({
        "notify_type": "trade_status_sync", "notify_id": f"n-{order_id}", "app_id": APP_ID,
        "out_trade_no": order_id, "trade_no": f"20261207{order_id[-20:]}",
        "trade_status": "TRADE_SUCCESS", "total_amount": "12.30", "seller_id": SELLER_ID,
    }, (dev_keys / "alipay_private_key.pem").read_bytes())
    return urllib.parse.urlencode(params)


def _round(base: str, dev_keys: Path) -> list[tuple[str, int, float]]:
    """One request to each page that reads the database, each on a connection of its own (so
    that both of the web's processes answer some): (page, status, seconds)."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    requests_ = [
        ("GET /skus/", lambda: requests.get(f"{base}/skus/", timeout=30)),
        ("GET /healthz", lambda: requests.get(f"{base}/healthz", timeout=30)),
        ("POST /payment/alipay/notify/",
         lambda: requests.post(f"{base}/payment/alipay/notify/", data=_notification(dev_keys),
                               headers=form, timeout=30)),
        # Not Alipay's: counted in the database, answered 400.
        ("PUT /payment/status/",
         lambda: requests.put(
             f"{base}/payment/status/?out_trade_no=x{secrets.token_hex(4)}&sign=%25",
             timeout=30)),
    ]
    answers = []
    for name, send in requests_:
        started = time.perf_counter()
        status = send().status_code
        answers.append((name, status, time.perf_counter() - started))
    return answers


EXPECTED = {"GET /skus/": 200, "GET /healthz": 200, "POST /payment/alipay/notify/": 200,
            "PUT /payment/status/": 400}


def test_terminated_database_connections_cost_no_request_an_error(
    asgi_web: str, dev_keys: Path
) -> None:
    # Every pool of both processes holds connections, some more than their two at rest.
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(lambda _: _round(asgi_web, dev_keys), range(ROUNDS)))
    assert {(name, status) for answers in warm for name, status, _ in answers} == set(
        EXPECTED.items())
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE application_name = %s AND datname = current_database()",
                       [ASGI_WEB_APPLICATION_NAME])
        (terminated,) = cursor.fetchone()
    assert terminated >= 4  # Django's pool and the intake's, in each of the two processes

    answers = [answer for _ in range(ROUNDS) for answer in _round(asgi_web, dev_keys)]

    failed = [(name, status) for name, status, _ in answers if status != EXPECTED[name]]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed}"
    # One retry, not waits of a second and more between dead connections.
    slowest = max(answers, key=lambda answer: answer[2])
    assert slowest[2] < 2.0, slowest
