"""The production serving stack (the Procfile's gunicorn with uvicorn workers): waiting
returns hold no thread, so they cannot starve the other pages."""
import socket
import statistics
import subprocess
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
    python_args,
    redis_url,
    signed_return,
    wait_for_port,
)

# No worker and no sweeper run: every return waits its full RETURN_WAIT_SECONDS.
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
    idle_broker = redis_url(12, worker_env["CELERY_BROKER_URL"])
    env = {**worker_env, "CELERY_BROKER_URL": idle_broker, "RETURN_WAIT_SECONDS": "4",
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
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies))]
    # Waits that held a thread or the event loop would show as seconds (RETURN_WAIT_SECONDS);
    # the bounds leave room for a machine shared with other work, where a p99 of 80 ms was
    # seen with nothing waiting wrongly.
    assert p50 <= 0.050 and p99 <= 0.250, (f"GET /skus/ p50 {p50 * 1000:.1f} ms "
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


def test_slow_clients_cannot_starve_the_embedded_stack(
    worker_env: dict[str, str], log_dir: Path, tmp_path: Path
) -> None:
    """`make run`'s stack (SQLite, filesystem broker, the Procfile's web): 200 connections
    that send half a request line, and 50 that stop half-way through a body, hold nothing
    that the next buyer needs."""
    port = free_port()
    env = {k: v for k, v in worker_env.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PAYMENT_REDIS_URL")}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "CELERY_BROKER_FOLDER": str(tmp_path / "broker"),
                "WEB_BIND": f"127.0.0.1:{port}", "DJANGO_DEBUG": "false",
                "LOG_LEVEL": "WARNING"})
    subprocess.run(python_args("manage.py", "migrate", "-v0"), env=env, check=True,
                   timeout=120)
    web = ManagedProcess("embedded-web", procfile_command("web"), env, log_dir).start()
    base = f"http://127.0.0.1:{port}"
    sockets: list[socket.socket] = []
    try:
        wait_for_port(port)
        before = [_timed_get(f"{base}/skus/") for _ in range(20)]
        for i in range(250):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i < 200:
                sock.sendall(b"GET /sk")
            else:
                sock.sendall(b"PUT /payment/status/ HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/x-www-form-urlencoded\r\n"
                             b"Content-Length: 5000\r\n\r\nsign=abc&out_")
            sockets.append(sock)
        time.sleep(0.5)
        during = sorted(_timed_get(f"{base}/skus/") for _ in range(50))
    finally:
        for sock in sockets:
            sock.close()
        web.stop()

    p95 = during[int(0.95 * len(during))]
    assert p95 <= max(0.2, 5 * statistics.median(before)), (
        f"GET /skus/ p95 {p95 * 1000:.1f} ms with 250 slow clients connected")
