"""A worker's metrics endpoint (its main process, WORKER_METRICS_PORT) against clients that
connect and never finish their request: started as the worker starts it, in this process."""
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from infra import metrics
from tests.support import free_port, wait_for
from workers import observability


@pytest.fixture
def endpoint(settings: Any) -> Iterator[int]:
    settings.WORKER_METRICS_PORT = free_port()
    settings.WORKER_METRICS_ADDRESS = "127.0.0.1"
    settings.HEADERS_TIMEOUT_SECONDS = 1.0
    observability._worker_metrics_serve()
    yield settings.WORKER_METRICS_PORT
    metrics.worker_server_stop()


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(4096) == b"" or _closed_by_server(sock, deadline)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_within_the_time_out_on_few_threads(endpoint: int) -> None:
    """Finding 10: 300 half-sent requests held 302 threads for over 30 s."""
    before = threading.active_count()
    sockets: list[socket.socket] = []
    try:
        for _ in range(300):
            sockets.append(socket.create_connection(("127.0.0.1", endpoint), timeout=5))
            sockets[-1].sendall(b"GET /metr")
            time.sleep(0.001)  # the server's thread accepts as they come
        time.sleep(0.3)
        during = threading.active_count() - before

        deadline = time.monotonic() + 1.0 + 1.5
        still_open = [sock for sock in sockets if not _closed_by_server(sock, deadline)]
    finally:
        for sock in sockets:
            sock.close()

    assert not still_open, f"{len(still_open)} connections still open after the time-out"
    assert during <= metrics.WORKER_METRICS_MAX_CONNECTIONS, f"{during} threads for 300 clients"
    wait_for(lambda: threading.active_count() <= before, timeout=2)
    scrape = requests.get(f"http://127.0.0.1:{endpoint}/metrics", timeout=5)
    assert scrape.status_code == 200
