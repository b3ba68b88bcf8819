"""The production serving stack (the Procfile's gunicorn with uvicorn workers): waiting
returns hold no thread, so they cannot starve the other pages."""
import statistics
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from tests.support import (
    ManagedProcess,
    free_port,
    procfile_command,
    signed_return,
    wait_for_port,
)

# No worker and no sweeper run: every return waits its full PAYMENT_STATUS_WAIT.
pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("exclusive_workers", "beat_paused")]


def _timed_get(url: str) -> float:
    start = time.perf_counter()
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return time.perf_counter() - start


def test_64_waiting_returns_do_not_slow_other_pages(
    worker_env: dict[str, str], log_dir: Path, dev_keys: Path
) -> None:
    port = free_port()
    idle_broker = worker_env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/12"
    env = {**worker_env, "CELERY_BROKER_URL": idle_broker, "PAYMENT_STATUS_WAIT": "4",
           "WEB_BIND": f"127.0.0.1:{port}", "LOG_LEVEL": "WARNING"}
    web = ManagedProcess("serving-web", procfile_command("web"), env, log_dir).start()
    base = f"http://127.0.0.1:{port}"
    key = (dev_keys / "alipay_private_key.pem").read_bytes()
    returns = [signed_return(f"20261126{i:021d}", "1.00", f"2026112622{i:018d}", key)
               for i in range(64)]
    try:
        wait_for_port(port)
        for _ in range(20):  # warm: both uvicorn workers have served a page
            _timed_get(f"{base}/skus/")
        with ThreadPoolExecutor(64) as pool:
            started = time.perf_counter()
            puts = [pool.submit(requests.put,
                                f"{base}/payment/status/?{urllib.parse.urlencode(params)}",
                                timeout=30) for params in returns]
            time.sleep(1.0)  # every return is stored and waiting by now
            latencies = sorted(_timed_get(f"{base}/skus/") for _ in range(200))
            answers = [future.result() for future in puts]
            waited = time.perf_counter() - started
    finally:
        web.stop()
        redis.Redis.from_url(idle_broker).flushdb()

    assert {a.status_code for a in answers} == {202}, {a.text for a in answers}
    assert waited >= 4
    p99 = latencies[int(0.99 * len(latencies))]
    assert p99 <= 0.050, (f"GET /skus/ p50 {statistics.median(latencies) * 1000:.1f} ms "
                          f"p99 {p99 * 1000:.1f} ms while 64 returns waited")


def test_access_log_lines_cannot_be_forged_through_the_path(
    asgi_web: str, log_dir: Path
) -> None:
    log = log_dir / "asgi-web.log"
    offset = log.stat().st_size

    response = requests.get(f"{asgi_web}/orders/%0Aforged-entry%20GET%20/admin/", timeout=10)

    assert response.status_code == 404
    time.sleep(0.5)  # the access line is written after the answer
    written = log.read_text(errors="replace")[offset:]
    assert "forged-entry" in written  # the request was logged, on its own line
    assert not any(line.startswith("forged-entry") for line in written.splitlines())
