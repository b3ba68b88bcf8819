"""The Procfile's web reached without the proxy (gunicorn, two uvicorn workers): a huge or
crowded header section, a body larger than the limit and a client that stops sending are
refused early, over raw sockets, and the workers serve on."""
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import (
    ManagedProcess,
    free_port,
    process_fixture,
    procfile_command,
    wait_for_port,
)

# Short, so that the stalled clients below are cut within the test's time.
TIMEOUT = 1.0


@dataclass
class Web:
    process: ManagedProcess
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> set[int]:
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return {int(pid) for pid in children}

    def spooled_bytes(self) -> int:
        """Bytes in the temporary files the workers hold open (Django spools a body there)."""
        total = 0
        for pid in self.worker_pids():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                    if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
                        total += fd.stat().st_size
                except OSError:
                    pass  # closed meanwhile
        return total


@process_fixture(scope="module")
def limits_web(worker_env: dict[str, str], log_dir: Path) -> Iterator[Web]:
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
           "BODY_TIMEOUT_SECONDS": str(TIMEOUT), "HEADERS_TIMEOUT_SECONDS": str(TIMEOUT)}
    web = ManagedProcess("limits-web", procfile_command("web"), env, log_dir).start()
    try:
        wait_for_port(port)
        for _ in range(10):  # both workers have started their apps
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield Web(web, port)
    finally:
        web.stop()


def _connect(web: Web) -> socket.socket:
    return socket.create_connection(("127.0.0.1", web.port), timeout=10)


def _status(sock: socket.socket, timeout: float) -> int | None:
    """The status of the answer read within `timeout` s; None: closed without an answer."""
    sock.settimeout(timeout)
    received = b""
    try:
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            received += chunk
    except (ConnectionResetError, TimeoutError):
        return None
    return int(received.split(b" ", 2)[1])


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """The rest of the answer is read and the server closes the connection within `timeout` s."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _send_in_background(sock: socket.socket, chunks: Iterator[bytes]) -> threading.Thread:
    """Send while the test reads: the answer may come before the client is done."""
    def send() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _serves(web: Web) -> bool:
    return requests.get(f"{web.base}/healthz", timeout=5).status_code == 200


def test_huge_headers_are_refused_with_431_quickly_and_the_worker_serves_on(
    limits_web: Web,
) -> None:
    """Finding 4: one 64 MiB header held a worker's event loop for seconds; more killed it."""
    workers = limits_web.worker_pids()
    sock = _connect(limits_web)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: "
    started = time.perf_counter()
    _send_in_background(sock, iter([head, *(b"a" * 1024 * 1024 for _ in range(64))]))

    status = _status(sock, timeout=10)
    elapsed = time.perf_counter() - started
    sock.close()

    assert status == 431
    assert elapsed < 1.0, f"431 after {elapsed:.2f} s"
    assert _serves(limits_web)
    assert limits_web.worker_pids() == workers  # no worker was stopped or replaced


def test_ten_thousand_headers_are_refused_with_431(limits_web: Web) -> None:
    """Finding 4: 50,000 headers were accepted."""
    workers = limits_web.worker_pids()
    sock = _connect(limits_web)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"a: b\r\n" * 10_000 + b"\r\n")

    status = _status(sock, timeout=10)
    sock.close()

    assert status == 431
    assert _serves(limits_web)
    assert limits_web.worker_pids() == workers


def test_a_huge_trailer_section_after_a_chunked_body_is_refused_with_431(limits_web: Web) -> None:
    """Finding 4: trailer fields are joined as header fields are; they are bounded alike."""
    sock = _connect(limits_web)
    head = (b"POST /payment/alipay/notify/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nsign\r\n0\r\nX-Huge: ")
    _send_in_background(sock, iter([head, *(b"a" * 1024 * 1024 for _ in range(8))]))

    status = _status(sock, timeout=5)
    sock.close()

    assert status == 431
    assert _serves(limits_web)


def test_a_body_announced_above_the_limit_is_refused_with_413_before_it_is_spooled(
    limits_web: Web,
) -> None:
    """Finding 6: a 400 MiB body to /authorizations/ got its 400 after /tmp grew by 290 MB.

    The answer must come from the announced length alone: the client sends the header
    section and waits (a server reading the body first would answer 408 at its time-out).
    Then it sends the body anyway, and nothing of it is spooled. (Sending the body at once
    made the answer a race: a server that closes with unread bytes resets the connection,
    and the client's kernel drops the 413 it had received.)"""
    sock = _connect(limits_web)
    sock.sendall(b"POST /authorizations/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (400 * 1024 * 1024))
    started = time.perf_counter()
    status = _status(sock, timeout=10)
    elapsed = time.perf_counter() - started
    sender = _send_in_background(sock, (b"x" * 1024 * 1024 for _ in range(400)))
    spooled = [limits_web.spooled_bytes()]
    while sender.is_alive() and len(spooled) < 100:
        spooled.append(limits_web.spooled_bytes())
        time.sleep(0.05)
    sock.close()
    sender.join(10)

    assert (status, max(spooled)) == (413, 0), f"{max(spooled)} bytes spooled to disk"
    assert elapsed < 2.0, f"413 after {elapsed:.2f} s"
    assert _serves(limits_web)


def test_a_chunked_body_passing_the_limit_is_refused_with_413_while_it_streams(
    limits_web: Web,
) -> None:
    """Finding 6: a body without a length is cut as soon as it passes the limit, not read to
    its end first."""
    from django.conf import settings

    sock = _connect(limits_web)
    sock.sendall(b"POST /authorizations/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = 64 * 1024
    for _ in range(settings.DATA_UPLOAD_MAX_MEMORY_SIZE // chunk + 2):  # past the limit; no end
        sock.sendall(b"%x\r\n%s\r\n" % (chunk, b"x" * chunk))

    status = _status(sock, timeout=TIMEOUT / 2)  # before a stalled body's time-out
    sock.close()

    assert status == 413


def _half_sent_body(path: str) -> Callable[[socket.socket], None]:
    def send(sock: socket.socket) -> None:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: 1000\r\n\r\nsign=abc&out_".encode())
    return send


@pytest.mark.parametrize("send_part", [
    pytest.param(_half_sent_body("/authorizations/"), id="django-body"),
    pytest.param(_half_sent_body("/payment/alipay/notify/"), id="intake-body"),
    pytest.param(lambda sock: sock.sendall(b"POST /authorizations/ HTTP/1.1\r\nHost: 12"),
                 id="header-section"),
])
def test_a_client_that_stops_sending_is_answered_408_within_the_time_out(
    limits_web: Web, send_part: Callable[[socket.socket], None],
) -> None:
    """Finding 10: a client that stopped sending its body was held without limit, on
    Django's path and on the intake's."""
    sock = _connect(limits_web)
    started = time.perf_counter()
    send_part(sock)

    status = _status(sock, timeout=TIMEOUT + 5)
    elapsed = time.perf_counter() - started
    closed = _closed_by_server(sock, timeout=1)
    sock.close()

    assert status == 408
    assert closed
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 1.5, f"answered after {elapsed:.2f} s"
