"""The gateway's transport (payment/gateway/client.py `gateway_post`): one kept connection per
thread, a connection the server ended while idle replaced before it is used, HTTP errors and
broken answers raised for the caller to retry, never retried here."""
import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from payment.gateway import client

BODY = b'{"alipay_trade_query_response":{"code":"10000"}}'


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests = 0
        self.mode = "ok"  # ok | close | status500 | cut
        self.url = f"http://127.0.0.1:{self.server_address[1]}/gateway.do"

    def process_request(self, request: object, client_address: object) -> None:
        self.connections += 1
        super().process_request(request, client_address)  # type: ignore[arg-type]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gateway

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests += 1
        mode = self.server.mode
        if mode == "cut":  # a reset in the middle of the answer
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"half")
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            return
        status = 500 if mode == "status500" else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
        if mode == "close":  # ends the kept connection once the answer is out
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client.clients_reset()  # no connection kept from another test
    yield server
    server.shutdown()
    server.server_close()


def test_calls_from_one_thread_share_one_kept_connection(gateway: Gateway) -> None:
    answers = [client.gateway_post(gateway.url, b"a=1", timeout=5) for _ in range(5)]

    assert answers == [BODY.decode()] * 5
    assert gateway.connections == 1


def test_a_connection_the_server_ended_while_idle_is_replaced_before_use(
        gateway: Gateway) -> None:
    gateway.mode = "close"
    client.gateway_post(gateway.url, b"a=1", timeout=5)
    gateway.mode = "ok"

    assert client.gateway_post(gateway.url, b"a=2", timeout=5) == BODY.decode()
    assert gateway.connections == 2
    assert gateway.requests == 2


def test_an_http_error_is_raised_with_its_status_and_sent_once(gateway: Gateway) -> None:
    gateway.mode = "status500"

    with pytest.raises(client.GatewayHTTPError) as raised:
        client.gateway_post(gateway.url, b"a=1", timeout=5)

    assert raised.value.status == 500
    assert gateway.requests == 1


def test_an_answer_cut_short_is_raised_not_retried_and_the_next_call_connects_anew(
        gateway: Gateway) -> None:
    gateway.mode = "cut"

    with pytest.raises((OSError, http.client.HTTPException)):
        client.gateway_post(gateway.url, b"a=1", timeout=5)
    assert gateway.requests == 1

    gateway.mode = "ok"
    assert client.gateway_post(gateway.url, b"a=2", timeout=5) == BODY.decode()
    assert gateway.connections == 2


def test_a_kept_connection_ended_just_as_it_is_reused_is_sent_once_more_on_a_new_one(
        gateway: Gateway) -> None:
    client.gateway_post(gateway.url, b"a=1", timeout=5)
    kept = client._connections.open[("http", "127.0.0.1", gateway.server_address[1])]
    assert kept.sock is not None
    # As if the server's close had not yet arrived when the connection was checked.
    kept.sock.shutdown(socket.SHUT_RDWR)

    assert client.gateway_post(gateway.url, b"a=2", timeout=5) == BODY.decode()
    assert gateway.connections == 2
