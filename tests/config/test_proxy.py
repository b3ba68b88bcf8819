"""deploy/nginx.conf, run by a real nginx in front of the production web process: nginx accepts
it (with and without TLS), client addresses come from the proxy and nowhere else, security
headers are on every answer (the payment endpoints have no Django middleware), large bodies
and bursts of sign-in attempts are refused. Skipped where nginx is not installed
(apt-get install nginx-light)."""
import http.client
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from payment.intake.admission import Busy
from payment.models import RefusedRequest
from shop.models import User
from tests.config.compose import PRODUCTION_VARIABLES, service_environment
from tests.support import (
    NGINX,
    ManagedProcess,
    Proxy,
    free_port,
    process_fixture,
    procfile_command,
    signed_return,
    wait_for,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)


needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@pytest.mark.slow
@needs_nginx
@pytest.mark.parametrize("tls", [False, True], ids=["plain-http", "tls"])
def test_nginx_accepts_the_proxy_config(tls: bool, tmp_path: Path) -> None:
    proxy = Proxy(tmp_path, upstream_port=8000, tls=tls)

    result = subprocess.run(proxy.args("-t"), capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr


@process_fixture(scope="module")
def proxy(
    asgi_web: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    upstream_port = int(urllib.parse.urlsplit(asgi_web).port or 80)
    running = Proxy(tmp_path_factory.mktemp("nginx"), upstream_port, tls=True)
    process = running.start(log_dir)
    yield running
    process.stop()


def _request(port: int, method: str, path: str, *, source: str = "127.0.0.1", tls: bool = False,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request from a chosen loopback address (the proxy sees it as the client's)."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=15, source_address=(source, 0), context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15,
                                                source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _forged_return(dev_keys: Path) -> tuple[str, str]:
    """Return parameters signed with the wrong key: refused, and recorded with the sender."""
    out_trade_no = f"{time.time_ns()}{0:09d}"
    params = signed_return(out_trade_no, "9.90", "2026112622001400000000000777",
                           (dev_keys / "app_private_key.pem").read_bytes())
    return out_trade_no, f"/payment/status/?{urllib.parse.urlencode(params)}"


def _recorded_sender(out_trade_no: str) -> Any:
    """The client a refused request is counted against."""
    return RefusedRequest.objects.get(out_trade_no=out_trade_no).remote_addr


def test_the_web_records_the_client_the_proxy_saw_not_the_one_a_client_claims(
    proxy: Proxy, dev_keys: Path,
) -> None:
    out_trade_no, path = _forged_return(dev_keys)

    status, _, _ = _request(proxy.port, "PUT", path, source="127.0.0.2",
                            headers={"X-Forwarded-For": "203.0.113.66"})

    assert status == 403
    assert _recorded_sender(out_trade_no) == "127.0.0.2"


def test_request_id_is_the_proxys_never_the_one_a_client_sends(
    proxy: Proxy, log_dir: Path
) -> None:
    """The web keeps the X-Request-ID of a trusted proxy: nginx replaces a client's with its
    own $request_id, which its access log shows too."""
    chosen = "chosen-by-the-client-0001"

    status, answer, _ = _request(proxy.port, "GET", "/skus/", source="127.0.0.2",
                                 headers={"X-Request-ID": chosen})

    assert status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", answer["X-Request-ID"]), answer["X-Request-ID"]
    access_log = log_dir / "nginx.log"  # nginx's standard output
    wait_for(lambda: answer["X-Request-ID"] in access_log.read_text(errors="replace"), 5)


def test_payment_endpoints_and_pages_carry_one_set_of_security_headers(
    proxy: Proxy, dev_keys: Path,
) -> None:
    _, path = _forged_return(dev_keys)
    answers = {
        "status over http": _request(proxy.port, "PUT", path),
        "notify over http": _request(proxy.port, "POST", "/payment/alipay/notify/",
                                     body=b"hello=world", headers={
                                         "Content-Type": "application/x-www-form-urlencoded"}),
        "page over http": _request(proxy.port, "GET", "/"),
        "status over tls": _request(proxy.tls_port or 0, "PUT", path, tls=True),
        "page over tls": _request(proxy.tls_port or 0, "GET", "/", tls=True),
    }

    assert [status for status, _, _ in answers.values()] == [403, 400, 200, 403, 200]
    for name, (_, headers, _) in answers.items():
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"], name
        assert headers.get_all("X-Frame-Options") == ["DENY"], name
        assert headers.get_all("Referrer-Policy") == ["same-origin"], name
        hsts = headers.get_all("Strict-Transport-Security") or []
        if name.endswith("over tls"):
            assert len(hsts) == 1 and hsts[0].startswith("max-age="), name
        else:
            assert hsts == [], name
        assert headers.get("Server") == "nginx", name  # no version


def test_a_body_above_the_limit_is_refused_by_the_proxy(proxy: Proxy) -> None:
    status, _, _ = _request(proxy.port, "PUT", "/payment/status/", body=b"s" * (300 * 1024),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert status == 413


def test_sign_in_attempts_are_limited_per_client_and_the_form_is_not(proxy: Proxy) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attempts = [_request(proxy.port, "POST", "/login/", source="127.0.0.3", body=b"username=a",
                         headers=form)[0] for _ in range(16)]
    token_attempts = [_request(proxy.port, "POST", "/authorizations/", source="127.0.0.3",
                               body=b"username=a", headers=form)[0] for _ in range(2)]
    pages = [_request(proxy.port, "GET", "/login/", source="127.0.0.3")[0] for _ in range(5)]
    other_client = _request(proxy.port, "POST", "/login/", source="127.0.0.4", body=b"x=1",
                            headers=form)[0]

    assert 429 not in attempts[:11]  # the burst
    assert attempts[11:] == [429] * 5
    assert token_attempts == [429, 429]  # one budget for every way of signing in
    assert pages == [200] * 5
    assert other_client != 429


def test_a_buyer_signs_in_through_the_proxy_on_a_port_of_its_own(proxy: Proxy) -> None:
    # The web's own hasher: the tests' fast one is not among its PASSWORD_HASHERS.
    User.objects.create(username="proxybuyer", password=PBKDF2PasswordHasher().encode(
        "s3cret-pass", "proxybuyersalt", iterations=1000))
    origin = f"http://127.0.0.1:{proxy.port}"
    _, headers, page = _request(proxy.port, "GET", "/login/", source="127.0.0.5")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1).decode(),
                                   "username": "proxybuyer", "password": "s3cret-pass"})

    status, answer, _ = _request(
        proxy.port, "POST", "/login/", source="127.0.0.5", body=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
                 "Origin": origin, "Referer": f"{origin}/login/"})

    assert status == 302 and answer["Location"] == "/"  # CSRF saw the Host with its port
    assert "sessionid=" in " ".join(answer.get_all("Set-Cookie") or [])


def test_forwarded_headers_are_believed_only_from_the_compose_network(
    worker_env: dict[str, str], log_dir: Path, dev_keys: Path,
) -> None:
    trusted = service_environment("web", PRODUCTION_VARIABLES)["FORWARDED_ALLOW_IPS"]
    assert ipaddress.ip_address("127.0.0.1") not in ipaddress.ip_network(trusted)
    port = free_port()
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "FORWARDED_ALLOW_IPS": trusted}
    web = ManagedProcess("web-compose-trust", procfile_command("web"), env, log_dir).start()
    out_trade_no, path = _forged_return(dev_keys)
    try:
        wait_for_port(port)
        status, _, _ = _request(port, "PUT", path, headers={"X-Forwarded-For": "198.51.100.7"})
    finally:
        web.stop()

    assert status == 403
    assert _recorded_sender(out_trade_no) == "127.0.0.1"


class _Stalling:
    """A web that takes connections and never answers: every request to it stays in flight."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.server.close()
        for connection in self.held:
            connection.close()


def _sent_and_left(port: int, method: str, path: str, body: bytes = b"") -> socket.socket:
    """A request sent whole, its answer not read (it stays in flight at the proxy)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=15)
    client.sendall(f"{method} {path} HTTP/1.1\r\nHost: shop\r\n"
                   "Content-Type: application/x-www-form-urlencoded\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return client


BUSY_CHANGES = {"max_conns=64;": "max_conns=2;", "max_conns=96;": "max_conns=2;"}


@pytest.mark.slow
@needs_nginx
def test_past_the_requests_in_flight_a_replica_takes_the_proxy_refuses_at_once(
    log_dir: Path, tmp_path: Path, dev_keys: Path,
) -> None:
    """Each payment endpoint has its own bound of requests in flight per replica: past it,
    503 with Retry-After at once (`fail` to Alipay, which delivers again), nothing passed on;
    the other endpoint and the pages are not held up by it."""
    web = _Stalling()
    proxy = Proxy(tmp_path, web.port, tls=False, changes=BUSY_CHANGES)
    process = proxy.start(log_dir, name="nginx-busy")
    _, return_path = _forged_return(dev_keys)
    left: list[socket.socket] = []
    try:
        left += [_sent_and_left(proxy.port, "POST", "/payment/alipay/notify/", b"a=1")
                 for _ in range(2)]
        wait_for(lambda: len(web.held) == 2, 10)
        started = time.monotonic()
        notify = _request(proxy.port, "POST", "/payment/alipay/notify/", body=b"a=2",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        notify_seconds = time.monotonic() - started
        left += [_sent_and_left(proxy.port, "PUT", return_path) for _ in range(2)]
        wait_for(lambda: len(web.held) == 4, 10)  # the returns' own two places
        returned = _request(proxy.port, "PUT", return_path)
        passed_on = len(web.held)
    finally:
        for client in left:
            client.close()
        process.stop()
        web.close()
    logged = process.log_text() + (tmp_path / "error.log").read_text(errors="replace")

    status, headers, body = notify
    assert (status, body) == (503, b"fail")
    assert headers["Retry-After"] == "1"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers.get_all("X-Content-Type-Options") == ["nosniff"]
    assert notify_seconds < 2  # refused, not queued behind the two in flight
    status, headers, body = returned
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(body) == {"message": str(Busy(1))}  # the web's own words for it
    assert passed_on == 4  # neither refusal reached the web
    # nginx's error lines quote the request line: not a return's signed query string.
    assert "/payment/status/ " in logged and "sign=" not in logged


@pytest.mark.slow
@needs_nginx
def test_a_web_that_cannot_be_reached_gets_alipay_a_fail_it_retries(
    log_dir: Path, tmp_path: Path,
) -> None:
    proxy = Proxy(tmp_path, free_port(), tls=False)  # nothing listens there
    process = proxy.start(log_dir, name="nginx-no-web")
    try:
        status, headers, body = _request(
            proxy.port, "POST", "/payment/alipay/notify/", body=b"a=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        page_status = _request(proxy.port, "GET", "/")[0]
    finally:
        process.stop()

    assert (status, body, headers["Retry-After"]) == (503, b"fail", "1")
    assert page_status == 502  # pages are not Alipay's: the proxy's own error
