"""Logs name ids, never signatures or whole payloads: the web's access log and the workers;
in production one JSON object per line, with the request id from the web to the worker."""
import http.client
import json
import logging
import re
import secrets
import sys
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from alipay_sandbox.client import SandboxControl
from infra.logs import ContextFilter, JsonFormatter, TextFormatter, log_ids, request_origins
from payment.models import PaymentEvent, Refund
from tests.factories import OrderFactory, StaffFactory, order_with_link, signed_in
from tests.support import (
    ManagedProcess,
    ShopClient,
    free_port,
    procfile_command,
    query_params,
    wait_for,
    wait_for_port,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_paid_return_leaves_no_signature_in_any_log(
    web: str, sandbox: SandboxControl, celery_workers: ManagedProcess,
    worker_env: dict[str, str], log_dir: Path,
) -> None:
    port = free_port()
    logged_web = ManagedProcess("logged-web", procfile_command("web"),
                                {**worker_env, "WEB_BIND": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        wait_for_port(port)
        order, url = order_with_link(total_amount=Decimal("7.00"))
        order_id = order.order_id
        paid = sandbox.pay(url)
        params = query_params(paid["return_url"])

        response = requests.put(
            f"http://127.0.0.1:{port}/payment/status/?{urllib.parse.urlencode(params)}",
            timeout=30,
        )

        assert response.status_code == 200, response.text
    finally:
        logged_web.stop()
    access_log = logged_web.log_text()
    assert "PUT /payment/status/ HTTP/1.1" in access_log
    for log in (access_log, celery_workers.log_text()):
        assert params["sign"][:40] not in log
        assert urllib.parse.quote(params["sign"][:40], safe="") not in log
    assert order_id in celery_workers.log_text()
    # One clock in every line: UTC with a `Z`, gunicorn's own lines and the access log too.
    utc_line = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")
    assert all(utc_line.match(line) for line in access_log.splitlines() if line), access_log
    # Records' first lines: a traceback's lines (indented) name celery's modules too.
    worker_lines = [line for line in celery_workers.log_text().splitlines()
                    if " celery." in line and not line.startswith(" ")]
    assert worker_lines and all(utc_line.match(line) for line in worker_lines)


# -- JSON lines in production -------------------------------------------------------------------

def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log, each one JSON object (fails on any other line)."""
    lines = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        lines.append(record)
    return lines


def _lines_with(lines: list[dict[str, Any]], text: str, **fields: Any) -> list[dict[str, Any]]:
    return [line for line in lines if text in line["message"]
            and all(line.get(name) == value for name, value in fields.items())]


@pytest.fixture
def production_env(worker_env: dict[str, str]) -> dict[str, str]:
    """Production's settings, JSON logs by default (no LOG_FORMAT)."""
    env = {**worker_env, "DJANGO_ENV": "production",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "127.0.0.1"}
    env.pop("LOG_FORMAT", None)
    return env


def test_production_logs_are_json_lines_with_the_request_id_from_web_to_worker(
    production_env: dict[str, str], exclusive_workers: Any, sandbox: SandboxControl,
    log_dir: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = ManagedProcess("json-web", procfile_command("web"), {
        **production_env, "WEB_BIND": f"127.0.0.1:{port}",
        "ALIPAY_NOTIFY_URL": f"{base}/payment/alipay/notify/",
        "ALIPAY_RETURN_URL": f"{base}/pay_success.html"}, log_dir).start()
    worker = exclusive_workers("json-worker", **{
        name: value for name, value in production_env.items() if name.startswith("DJANGO_")})
    try:
        wait_for_port(port)
        shop = ShopClient(base)
        # The proxy's header: production serves HTTPS only (127.0.0.1 is a trusted proxy).
        shop.session.headers["X-Forwarded-Proto"] = "https"
        order = OrderFactory(total_amount=Decimal("25.00"))
        signed_in(shop, order.user)
        order_id = order.order_id
        # No notification: the return alone, confirmed by a trade query, pays the order.
        sandbox.set_faults(notify_drop=True)
        paid = sandbox.pay(shop.pay_link(order_id).json()["alipay_url"])
        params = query_params(paid["return_url"])
        return_id = "return-" + secrets.token_hex(8)
        answer = requests.put(f"{base}/payment/status/?{urllib.parse.urlencode(params)}",
                              headers={"X-Request-ID": return_id}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Request-ID"] == return_id
        event = PaymentEvent.objects.get(order_id=order_id, source="return")
        assert event.request_id == return_id

        # A staff refund: the request id travels in the Celery task's headers.
        operator = ShopClient(base)
        operator.session.headers["X-Forwarded-Proto"] = "https"
        signed_in(operator, StaffFactory(permissions=["payment.refund_payment"]))
        refund_id = "refund-" + secrets.token_hex(8)
        asked = operator.session.post(
            f"{base}/orders/{order_id}/refunds/", json={"amount": "5.00", "reason": "Scratched"},
            headers={"X-Request-ID": refund_id}, timeout=20)
        assert asked.status_code == 201, asked.text
        wait_for(lambda: Refund.objects.filter(order_id=order_id).exclude(
            state=Refund.State.REQUESTED).exists(), 20)
        wait_for(lambda: "refund sent" in worker.log_text(), 10)
        # Read while both run: the worker's farewell at shutdown is Celery's print.
        web_log, worker_log = web.log_text(), worker.log_text()
    finally:
        web.stop()

    web_lines, worker_lines = _json_lines(web_log), _json_lines(worker_log)
    trade_no = params["trade_no"]
    # The web stored the return with its request id; the worker applied it under the same id.
    stored = _lines_with(web_lines, "payment event stored", event_id=event.pk)
    assert stored and stored[0]["request_id"] == return_id
    assert (stored[0]["order_id"], stored[0]["trade_no"]) == (order_id, trade_no)
    applied = _lines_with(worker_lines, "payment applied", event_id=event.pk)
    assert len(applied) == 1
    assert (applied[0]["order_id"], applied[0]["trade_no"]) == (order_id, trade_no)
    assert applied[0]["request_id"] == return_id
    assert applied[0]["logger"] == "payment.processing.applying" and applied[0]["level"] == "INFO"
    access = [line for line in web_lines if line["logger"] == "uvicorn.access"
              and "/payment/status/" in line["message"]]
    assert access and access[0]["request_id"] == return_id
    # The refund's task ran under the staff request's id.
    sent = _lines_with(worker_lines, "refund sent", order_id=order_id)
    assert sent and sent[0]["request_id"] == refund_id and sent[0]["trade_no"] == trade_no
    assert sent[0]["task_id"]
    for log in (web_log, worker_log):
        assert params["sign"][:40] not in log
        assert urllib.parse.quote(params["sign"][:40], safe="") not in log


def test_json_lines_keep_a_request_path_but_never_its_query_string(rf: Any) -> None:
    """Django's request logger attaches the request (its repr has the query string: a return's
    signature); the JSON line keeps its method and path only."""
    request = rf.put("/payment/status/?out_trade_no=1&sign=c2VjcmV0LXNpZ25hdHVyZQ==")
    logger = logging.getLogger("django.request")
    record = logger.makeRecord("django.request", logging.WARNING, __file__, 1,
                               "Forbidden: %s", ("/payment/status/",), None,
                               extra={"request": request, "status_code": 403})
    ContextFilter().filter(record)

    line = json.loads(JsonFormatter().format(record))

    assert line["message"] == "Forbidden: /payment/status/"
    assert (line["http_method"], line["http_path"]) == ("PUT", "/payment/status/")
    assert line["status_code"] == 403 and line["level"] == "WARNING"
    assert "c2VjcmV0" not in json.dumps(line)


def test_lines_about_an_event_carry_the_request_id_it_arrived_with() -> None:
    logger = logging.getLogger("payment.processing.batch")
    with request_origins(field="event_id", origins={7: "from-the-web-1234"}):
        about_event = logger.makeRecord("payment.processing.batch", logging.INFO, __file__, 1,
                                        "payment event id=%s", (7,), None,
                                        extra=log_ids(order_id="o1", event_id=7))
        about_other = logger.makeRecord("payment.processing.batch", logging.INFO, __file__, 1,
                                        "payment event id=%s", (8,), None,
                                        extra=log_ids(order_id="o2", event_id=8))
        for record in (about_event, about_other):
            ContextFilter().filter(record)

    first = json.loads(JsonFormatter().format(about_event))
    assert (first["request_id"], first["order_id"], first["trade_no"], first["event_id"]) == (
        "from-the-web-1234", "o1", None, 7)
    assert json.loads(JsonFormatter().format(about_other))["request_id"] is None


def test_sdk_logger_stays_quiet_after_the_sdk_is_imported() -> None:
    """The SDK configures its own logger (DEBUG, to stderr) when first imported; the gateway,
    its one importer, puts the project's quiet configuration back."""
    import payment.gateway.client  # noqa: F401  (imports the SDK)

    sdk = logging.getLogger("python-alipay-sdk")
    # (pytest's own capturing handlers may be attached; the SDK's stderr handler must not be.)
    assert not [h for h in sdk.handlers if type(h) is logging.StreamHandler]
    assert sdk.getEffectiveLevel() >= logging.WARNING
    assert sdk.propagate is False


# -- one record, one line -----------------------------------------------------------------------

# What a client may send to start a line of its own: every line break str.splitlines() knows
# (log shippers split on some of them), a terminal's escape sequences, and a NUL.
LINE_BREAKS = ("\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
               "\u2029")
FORGED = "2026-12-06T23:59:59.000Z CRITICAL payment.applying payment applied order_id=forged"


def _record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.getLogger("payment.intake.core").makeRecord(
        "payment.intake.core", logging.WARNING, __file__, 1, message, args, None, extra=extra)
    ContextFilter().filter(record)
    return record


@pytest.mark.parametrize("line_break", LINE_BREAKS)
def test_log_values_cannot_start_a_line_of_their_own_in_either_format(line_break: str) -> None:
    value = f"x{line_break}{FORGED}\x1b[2K\x00"
    record = _record("notify refused from %s out_trade_no=%s", value, value,
                     **log_ids(order_id=value, trade_no=value))

    text = TextFormatter().format(record)
    json_line = JsonFormatter().format(record)

    assert text.splitlines() == [text], text
    assert json_line.splitlines() == [json_line], json_line
    fields = json.loads(json_line)
    for name in ("message", "order_id", "trade_no"):
        assert fields[name].splitlines() == [fields[name]], (name, fields[name])
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", fields[name]), fields[name]
    assert "\\x1b[2K" in fields["message"] and "\\x1b[2K" in text  # shown, escaped
    assert fields["order_id"].startswith("x\\")


def test_a_traceback_stays_readable_and_its_lines_cannot_pass_for_records() -> None:
    try:
        raise ValueError(f"bad value x\n{FORGED}")
    except ValueError:
        record = _record("could not apply %s", "x")
        record.exc_info = sys.exc_info()

    text = TextFormatter().format(record)
    lines = text.splitlines()

    assert "Traceback (most recent call last):" in text
    assert all(line.startswith(" ") for line in lines[1:]), lines  # continuation lines
    assert not any(line.startswith(FORGED[:24]) for line in lines)
    assert json.loads(JsonFormatter().format(record))["exc_info"].startswith("Traceback")


def test_forged_notification_writes_no_forged_line_into_the_web_log(
    asgi_web: str, log_dir: Path
) -> None:
    """The Procfile's web with text logs (development's default): a notification whose
    out_trade_no holds a line break, and one whose forwarded address does (127.0.0.1 is a
    trusted proxy), are refused and logged, each on one line."""
    log = log_dir / "asgi-web.log"
    offset = log.stat().st_size
    marker = secrets.token_hex(6)

    # (The refusal's line shows the first 64 characters of out_trade_no.)
    in_body = requests.post(f"{asgi_web}/payment/alipay/notify/", data={
        "out_trade_no": f"{marker}\n{FORGED}", "sign": "abc", "trade_no": "1"}, timeout=10)
    forwarded = requests.post(
        f"{asgi_web}/payment/alipay/notify/", data={"out_trade_no": "x1", "sign": "abc"},
        headers={"X-Forwarded-For": f"198.51.100.7\x85{FORGED}-{marker}"}, timeout=10)

    assert (in_body.status_code, forwarded.status_code) == (400, 400)
    wait_for(lambda: log.read_text(errors="replace")[offset:].count(marker) >= 3, 5)
    written = log.read_text(errors="replace")[offset:]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", written), written  # text lines
    forged = [line for line in written.splitlines() if line.startswith(FORGED[:24])]
    assert not forged, forged


# -- request ids: a proxy's, never a client's -----------------------------------------------------

def _request_id_answered(base: str, source: str, sent: str) -> str:
    """GET /skus/ from the local address `source` with X-Request-ID `sent`: the id answered."""
    url = urllib.parse.urlsplit(base)
    assert url.hostname and url.port
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/skus/", headers={"X-Request-ID": sent})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return str(response.getheader("X-Request-ID"))
    finally:
        conn.close()


FRESH_ID = re.compile(r"[0-9a-f]{32}")


def test_request_id_is_taken_only_from_a_trusted_proxy(asgi_web: str, log_dir: Path) -> None:
    """FORWARDED_ALLOW_IPS (gunicorn's default: 127.0.0.1) names the proxies whose
    X-Forwarded-For the web believes; their X-Request-ID is kept, anyone else's replaced."""
    chosen = "chosen-" + secrets.token_hex(8)

    from_proxy = _request_id_answered(asgi_web, "127.0.0.1", chosen)
    from_client = _request_id_answered(asgi_web, "127.0.0.2", chosen)  # loopback, not trusted
    too_long = _request_id_answered(asgi_web, "127.0.0.1", "x" * 65)
    odd_characters = _request_id_answered(asgi_web, "127.0.0.1", "id with spaces/%")

    assert from_proxy == chosen
    assert FRESH_ID.fullmatch(from_client), from_client
    assert FRESH_ID.fullmatch(too_long) and FRESH_ID.fullmatch(odd_characters)
    log = log_dir / "asgi-web.log"
    wait_for(lambda: f"request_id={from_client}" in log.read_text(errors="replace"), 5)
    lines = log.read_text(errors="replace").splitlines()
    assert [line for line in lines if "127.0.0.2:" in line and from_client in line]
    assert not [line for line in lines if "127.0.0.2:" in line and chosen in line]


def test_request_id_is_taken_only_from_a_trusted_proxy_on_djangos_side(client: Any) -> None:
    """The WSGI module and runserver: the peer is REMOTE_ADDR."""
    chosen = "chosen-" + secrets.token_hex(8)

    from_proxy = client.get("/skus/", HTTP_X_REQUEST_ID=chosen, REMOTE_ADDR="127.0.0.1")
    from_client = client.get("/skus/", HTTP_X_REQUEST_ID=chosen, REMOTE_ADDR="203.0.113.9")
    too_long = client.get("/skus/", HTTP_X_REQUEST_ID="x" * 65, REMOTE_ADDR="127.0.0.1")

    assert from_proxy.headers["X-Request-ID"] == chosen
    assert FRESH_ID.fullmatch(from_client.headers["X-Request-ID"])
    assert FRESH_ID.fullmatch(too_long.headers["X-Request-ID"])
