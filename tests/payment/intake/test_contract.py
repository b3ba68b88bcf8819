"""The intake's contract: PUT /payment/status/ and POST /payment/alipay/notify/ as Alipay and
the buyer's browser reach them, on the Procfile's web over each database (see conftest.py).

Every test runs on both stacks; the answers and the books must be the same.
"""
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from alipay_sandbox.client import SandboxControl
from tests.payment.intake.conftest import IntakeStack, sqlite_env, web_start
from tests.support import APP_ID, SELLER_ID, sign_params, wait_for

# The PostgreSQL stack runs on the test database, which pytest-django sets up (and empties
# after each test) for tests marked so.
pytestmark = pytest.mark.django_db(transaction=True)

UNPAID, UNSEND = 1, 2


def _trade_no(order_id: str) -> str:
    """A trade number of this order's own: the SQLite stack keeps its payments between tests,
    and a trade number pays one order only."""
    return f"2088{order_id[-24:]:0>24}"


def _forged_return(order_id: str, key: Path, **changes: str) -> dict[str, str]:
    params = {
        "charset": "utf-8", "out_trade_no": order_id, "method": "alipay.trade.page.pay.return",
        "total_amount": "10.00", "trade_no": _trade_no(order_id),
        "auth_app_id": APP_ID, "version": "1.0", "app_id": APP_ID,
        "seller_id": SELLER_ID, "timestamp": "2026-11-25 20:00:00",
    }
    params.update(changes)
    return sign_params(params, key.read_bytes())


def _notification(order_id: str, key: Path, **changes: str) -> dict[str, str]:
    params = {
        "notify_time": "2026-11-25 20:00:01", "notify_type": "trade_status_sync",
        "notify_id": f"n{order_id}", "charset": "utf-8", "version": "1.0",
        "app_id": APP_ID, "seller_id": SELLER_ID, "out_trade_no": order_id,
        "trade_no": _trade_no(order_id), "trade_status": "TRADE_SUCCESS",
        "total_amount": "10.00",
    }
    params.update(changes)
    return sign_params(params, key.read_bytes())


def _put(stack: IntakeStack, params: dict[str, str] | str) -> requests.Response:
    query = params if isinstance(params, str) else urllib.parse.urlencode(params)
    return requests.put(f"{stack.base_url}/payment/status/?{query}", timeout=30)


def _notify(stack: IntakeStack, data: dict[str, str] | bytes,
            **headers: str) -> requests.Response:
    return requests.post(f"{stack.base_url}/payment/alipay/notify/", data=data,
                         headers=headers, timeout=30)


# -- returns ----------------------------------------------------------------------------------

def test_return_params_pay_the_order(stack: IntakeStack, sandbox: SandboxControl) -> None:
    sandbox.set_faults(notify_drop=True)  # the return is what pays
    shop, order_id, params = stack.paid_order(sandbox)
    assert Decimal(params["total_amount"]) == Decimal("257.60")

    response = _put(stack, params)

    assert response.status_code == 200, response.text
    assert response.json() == {"trade_id": params["trade_no"]}
    assert stack.books.order_status(order_id) == UNSEND
    [payment] = stack.books.payments(order_id)
    assert (payment["trade_id"], Decimal(str(payment["amount"]))) == (
        params["trade_no"], Decimal("257.60"))
    [event] = stack.books.events(order_id, "return")
    assert event["state"] == "applied"
    assert event["raw_data"]["sign"] == params["sign"]
    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/")).json()
    assert status["status"] == "UNSEND" and status["trade_id"] == params["trade_no"]


def test_reloading_the_success_page_answers_the_trade_again(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    # The return is what pays: a notification applied before it arrives would leave no
    # return stored at all (the first PUT answered from the payment, like the reloads).
    sandbox.set_faults(notify_drop=True)
    _, order_id, params = stack.paid_order(sandbox)
    first = _put(stack, params)
    again = _put(stack, params)
    as_post = requests.post(f"{stack.base_url}/payment/status/", data=params, timeout=30)

    assert [r.status_code for r in (first, again, as_post)] == [200, 200, 200]
    assert {r.json()["trade_id"] for r in (first, again, as_post)} == {params["trade_no"]}
    assert len(stack.books.payments(order_id)) == 1
    # The reloads were answered from the payment: one delivery stored.
    [event] = stack.books.events(order_id, "return")
    assert (event["state"], event["deliveries"]) == ("applied", 1)


def test_same_return_put_20_times_concurrently_pays_once(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_drop=True)  # the returns are what pays
    _, order_id, params = stack.paid_order(sandbox)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: _put(stack, params), range(20)))

    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert {r.json()["trade_id"] for r in responses} == {params["trade_no"]}
    assert len(stack.books.payments(order_id)) == 1
    assert stack.books.order_status(order_id) == UNSEND
    [event] = stack.books.events(order_id, "return")
    # Deliveries that raced the first one are counted on the event; later ones were answered
    # from the payment without a write.
    assert 1 <= event["deliveries"] <= 20


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"total_amount": "0.01"}, "total_amount"),
        ({"app_id": "2021999999999999"}, "app_id"),
        ({"seller_id": "2088999999999999"}, "seller_id"),
        ({"out_trade_no": "20990101000000000000000000001"}, "out_trade_no"),
        ({"method": "alipay.trade.page.pay"}, "not a return"),
    ],
    ids=["wrong-amount", "wrong-app-id", "wrong-seller", "unknown-order", "not-a-return"],
)
def test_signed_but_wrong_return_is_rejected(
    stack: IntakeStack, dev_keys: Path, changes: dict[str, str], why: str
) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    params = _forged_return(order_id, dev_keys / "alipay_private_key.pem", **changes)

    response = _put(stack, params)

    assert response.status_code == 403, response.text
    assert "message" in response.json()
    assert stack.books.order_status(order_id) == UNPAID
    assert not stack.books.payments(order_id)
    [event] = stack.books.events(params["out_trade_no"], "return")
    assert event["state"] == "rejected"
    assert why in event["reason"]


def test_return_signed_with_another_key_is_refused_apart(
    stack: IntakeStack, dev_keys: Path
) -> None:
    shop, order_id, _ = stack.unpaid_order("10.00")
    params = _forged_return(order_id, dev_keys / "app_private_key.pem")

    response = _put(stack, params)

    assert response.status_code == 403, response.text
    assert stack.books.order_status(order_id) == UNPAID
    # Not Alipay's: counted apart, never an event of the order nor shown to its buyer.
    assert not stack.books.events(order_id)
    [refused] = stack.books.refused(order_id)
    assert (refused["source"], refused["count"]) == ("return", 1)
    assert "signature" in refused["reason"] and "sign" not in refused["sample"]
    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"), timeout=10)
    assert status.status_code == 200 and status.json()["latest_event"] is None


def test_tampered_signature_is_rejected(stack: IntakeStack, sandbox: SandboxControl) -> None:
    sandbox.set_faults(notify_drop=True)  # only the tampered return may reach the order
    _, order_id, params = stack.paid_order(sandbox)
    params["sign"] = ("A" if params["sign"][0] != "A" else "B") + params["sign"][1:]

    assert _put(stack, params).status_code == 403
    assert not stack.books.payments(order_id)
    assert stack.books.order_status(order_id) == UNPAID


def test_order_a_params_replayed_for_order_b_are_rejected(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    shop, order_a, params = stack.paid_order(sandbox)
    sku = stack.books.sku_create(Decimal("257.60"))
    order_b = shop.order([{"sku_id": sku, "count": 1}])["order_id"]

    response = _put(stack, {**params, "out_trade_no": order_b})

    assert response.status_code == 403, response.text
    assert stack.books.order_status(order_b) == UNPAID
    assert not stack.books.payments(order_b)
    # Order A is untouched by the replay and still pays with its own parameters.
    assert _put(stack, params).status_code == 200
    assert stack.books.payments(order_a)[0]["trade_id"] == params["trade_no"]


def test_paid_with_another_trade_query_mismatch_is_rejected(
    stack: IntakeStack, sandbox: SandboxControl, dev_keys: Path
) -> None:
    """Validly signed, right amount, but Alipay's trade query knows another trade_no."""
    sandbox.set_faults(notify_drop=True)  # only the forged return may reach the order
    _, order_id, params = stack.paid_order(sandbox)
    forged = _forged_return(order_id, dev_keys / "alipay_private_key.pem",
                            total_amount=params["total_amount"],
                            trade_no="2026112522001499999999999999")

    assert _put(stack, forged).status_code == 403
    [event] = stack.books.events(order_id, "return")
    assert event["state"] == "rejected" and "another trade_no" in event["reason"]
    assert stack.books.order_status(order_id) == UNPAID


@pytest.mark.parametrize(
    "query",
    [
        "",
        "out_trade_no=123",
        "sign=abc",
        "sign=&out_trade_no=",
        "out_trade_no=%ff%fe&sign=%00",
        "&".join(f"k{i}=v" for i in range(100)) + "&sign=x&out_trade_no=1",
        "sign=x&out_trade_no=" + "9" * 5000,
    ],
    ids=["empty", "no-sign", "no-out-trade-no", "blank", "bad-bytes", "too-many", "too-long"],
)
def test_malformed_return_gets_400(stack: IntakeStack, query: str) -> None:
    response = requests.put(f"{stack.base_url}/payment/status/?{query}", timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["message"]


def test_forged_and_malformed_returns_are_refused_and_counted_apart(
    stack: IntakeStack, dev_keys: Path
) -> None:
    _, order_id, _ = stack.unpaid_order("9.90")
    forged = _forged_return(order_id, dev_keys / "app_private_key.pem",  # not Alipay's key
                            total_amount="9.90")
    url = f"{stack.base_url}/payment/status/"

    refused = _put(stack, forged)
    malformed = requests.put(f"{url}?out_trade_no=1", timeout=10)
    not_json = requests.put(url, data="[" * 60_000, timeout=10,
                            headers={"Content-Type": "application/json"})
    too_large = requests.put(url, data="[" * 100_000, timeout=10,
                             headers={"Content-Type": "application/json"})
    wrong_method = requests.get(url, timeout=10)
    too_many = requests.put(url, timeout=10, data="&".join(f"k{i}=v" for i in range(1500)),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert refused.status_code == 403 and refused.json()["message"]
    assert malformed.status_code == 400 and "sign" in malformed.json()["message"]
    assert not_json.status_code == 400 and not_json.json()["message"]
    assert too_large.status_code == 413 and too_large.json()["message"]
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "PUT, POST"
    assert too_many.status_code == 400 and too_many.json()["message"]
    assert not stack.books.events(order_id)
    # One row per client and hour: the first refusal's sample, every refusal counted (the
    # body above the limit is refused before it is read, and only counted in metrics).
    [record] = stack.books.refused(order_id)
    assert "signature" in record["reason"] and record["count"] == 4
    assert stack.books.order_status(order_id) == UNPAID


def test_garbage_signature_is_rejected_not_500(stack: IntakeStack) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    response = _put(stack, {"out_trade_no": order_id, "app_id": "x", "total_amount": "10.00",
                            "sign": "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA=="})
    assert response.status_code == 403
    assert stack.books.order_status(order_id) == UNPAID


def test_unreadable_json_body_gets_400(stack: IntakeStack) -> None:
    response = requests.put(f"{stack.base_url}/payment/status/", data="{not json", timeout=10,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"]


def test_gateway_error_during_confirming_query_is_retried(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(notify_drop=True)  # the return alone must pay, through the retries
    _, order_id, params = stack.paid_order(sandbox)
    sandbox.set_faults(error_rate=1.0, error_kind="20000", methods=["alipay.trade.query"])

    first = _put(stack, params)

    assert first.status_code == 202, first.text
    assert first.json() == {"status": "processing", "order_id": order_id}
    wait_for(lambda: stack.books.events(order_id, "return")[0]["attempts"] >= 2, 20)
    assert stack.books.order_status(order_id) == UNPAID
    sandbox.clear_faults()

    wait_for(lambda: stack.books.events(order_id, "return")[0]["state"] == "applied", 60)
    [event] = stack.books.events(order_id, "return")
    assert event["attempts"] >= 3
    assert "20000" in event["last_error"]
    assert stack.books.order_status(order_id) == UNSEND
    assert _put(stack, params).json() == {"trade_id": params["trade_no"]}


def test_return_query_string_is_taken_verbatim(stack: IntakeStack,
                                               sandbox: SandboxControl) -> None:
    """The storefront forwards Alipay's query string as it arrived, percent-encoding and all."""
    _, order_id, params = stack.paid_order(sandbox)
    response = _put(stack, urllib.parse.urlencode(params, quote_via=urllib.parse.quote))
    assert response.status_code == 200
    assert len(stack.books.payments(order_id)) == 1


def test_return_after_the_notification_paid_is_answered_without_a_write(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    _, order_id, params = stack.paid_order(sandbox)
    wait_for(lambda: bool(stack.books.payments(order_id)), 20)  # the notification

    response = _put(stack, params)

    assert response.status_code == 200, response.text
    assert response.json() == {"trade_id": params["trade_no"]}
    assert stack.books.payments(order_id)[0]["source"] == "notify"
    assert not stack.books.events(order_id, "return")


# -- notifications ----------------------------------------------------------------------------

def test_notification_alone_pays_when_the_return_is_dropped(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    sandbox.set_faults(drop_return=True)
    _, order_id, url = stack.unpaid_order("66.60")

    paid = sandbox.pay(url)

    assert paid["return_dropped"] is True
    wait_for(lambda: stack.books.order_status(order_id) == UNSEND, 20)
    [payment] = stack.books.payments(order_id)
    assert (payment["trade_id"], payment["source"]) == (paid["trade_no"], "notify")
    [event] = stack.books.events(order_id, "notify")
    assert event["state"] == "applied"
    notes = sandbox.notifications(out_trade_no=order_id)
    assert notes[0]["state"] == "delivered"
    assert notes[0]["attempts"][-1]["body"] == "success"


def test_notification_stored_once_counted_and_applied(stack: IntakeStack,
                                                      dev_keys: Path) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    params = _notification(order_id, dev_keys / "alipay_private_key.pem")

    answers = [_notify(stack, params) for _ in range(3)]

    assert [(r.status_code, r.text) for r in answers] == [(200, "success")] * 3
    wait_for(lambda: stack.books.order_status(order_id) == UNSEND, 20)
    [event] = stack.books.events(order_id, "notify")
    assert (event["state"], event["deliveries"]) == ("applied", 3)
    assert len(stack.books.payments(order_id)) == 1


def test_notification_endpoint_answers_fail_for_non_notifications(stack: IntakeStack) -> None:
    url = f"{stack.base_url}/payment/alipay/notify/"
    bad = requests.post(url, data={"hello": "world"}, timeout=10)
    cases = [
        requests.post(url, data={"out_trade_no": "1", "sign": "x"}, timeout=10),
        requests.post(url, data="{}", headers={"Content-Type": "application/json"}, timeout=10),
    ]
    get = requests.get(url, timeout=10)

    assert (bad.status_code, bad.text) == (400, "fail")
    assert [(r.status_code, r.text) for r in cases] == [(400, "fail")] * 2
    assert get.status_code == 405 and get.headers["Allow"] == "POST"
    # The first refusal of the hour is kept as a sample, the others counted on it.
    [refused] = stack.books.refused("")
    assert (refused["source"], refused["sample"], refused["count"]) == (
        "notify", {"hello": "world"}, 3)
    assert "sign" in refused["reason"]


def test_forged_notification_is_refused_and_cannot_squat_the_real_one(
    stack: IntakeStack, dev_keys: Path
) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    notify_id = f"squat-{order_id}"
    forged = _notification(order_id, dev_keys / "app_private_key.pem",  # not Alipay's key
                           notify_id=notify_id)

    answer = _notify(stack, forged)

    assert (answer.status_code, answer.text) == (400, "fail")
    assert not stack.books.events(order_id)
    [refused] = stack.books.refused(order_id)
    assert "signature" in refused["reason"]
    assert stack.books.order_status(order_id) == UNPAID

    # The genuine notification with the same notify_id is stored and pays the order.
    genuine = _notify(stack, _notification(order_id, dev_keys / "alipay_private_key.pem",
                                           notify_id=notify_id))
    assert (genuine.status_code, genuine.text) == (200, "success")
    wait_for(lambda: stack.books.order_status(order_id) == UNSEND, 20)
    [event] = stack.books.events(order_id, "notify")
    assert event["state"] == "applied" and event["raw_data"]["notify_id"] == notify_id


def test_unpaid_status_notification_is_recorded_only(stack: IntakeStack, dev_keys: Path) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    params = _notification(order_id, dev_keys / "alipay_private_key.pem",
                           trade_status="WAIT_BUYER_PAY")

    assert _notify(stack, params).text == "success"

    wait_for(lambda: stack.books.events(order_id, "notify")[0]["state"] != "received", 20)
    [event] = stack.books.events(order_id, "notify")
    assert event["state"] == "recorded"
    assert stack.books.order_status(order_id) == UNPAID
    assert not stack.books.payments(order_id)


def test_order_history_shows_the_return_and_the_notification(
    stack: IntakeStack, sandbox: SandboxControl
) -> None:
    shop, order_id, params = stack.paid_order(sandbox, "66.60")
    assert _put(stack, params).status_code == 200
    wait_for(lambda: any(e["state"] == "applied"
                         for e in stack.books.events(order_id, "notify")), 20)

    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"), timeout=10)

    assert status.json()["status"] == "UNSEND"
    assert status.json()["trade_id"] == params["trade_no"]
    assert {"return", "notify"} <= {e["source"] for e in status.json()["history"]}


# -- where the two entries once drifted apart -------------------------------------------------

def test_a_body_above_the_limit_is_413_on_both_endpoints(stack: IntakeStack) -> None:
    body = b"a=" + b"x" * 100_000
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status = requests.put(f"{stack.base_url}/payment/status/", data=body, headers=form,
                          timeout=10)
    notify = _notify(stack, body, **form)

    assert status.status_code == 413 and status.json()["message"]
    assert (notify.status_code, notify.text) == (413, "fail")


def test_media_types_are_compared_without_regard_to_case(stack: IntakeStack,
                                                         dev_keys: Path) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    params = _notification(order_id, dev_keys / "alipay_private_key.pem")

    response = _notify(stack, urllib.parse.urlencode(params).encode(),
                       **{"Content-Type": "Application/X-WWW-Form-Urlencoded; Charset=UTF-8"})

    assert (response.status_code, response.text) == (200, "success")
    assert len(stack.books.events(order_id, "notify")) == 1
    assert not stack.books.refused(order_id)


@pytest.mark.parametrize("path", ["/payment/status/", "/payment/alipay/notify/"])
def test_a_body_cut_short_is_refused_and_nothing_is_stored(
    stack: IntakeStack, dev_keys: Path, path: str
) -> None:
    _, order_id, _ = stack.unpaid_order("10.00")
    body = urllib.parse.urlencode(
        _notification(order_id, dev_keys / "alipay_private_key.pem")).encode()
    port = int(stack.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body) + 100}\r\nConnection: close\r\n\r\n".encode() + body)
        conn.shutdown(socket.SHUT_WR)  # the client gives up before the body is whole
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk

    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    # The server may close the connection before its app is done with the request.
    time.sleep(2)
    assert not stack.books.events(order_id)
    assert stack.books.order_status(order_id) == UNPAID


def test_database_away_is_503_for_returns_and_fail_for_notifications(
    stack: IntakeStack, dev_keys: Path, log_dir: Path, tmp_path: Path
) -> None:
    if stack.name == "postgresql":
        closed = f"postgres://postgres@127.0.0.1:{_closed_port()}/test"
        env = {**stack.env, "DATABASE_URL": closed}
    else:
        env = sqlite_env(stack.env, tmp_path / "no-such-folder")
    web, url = web_start(env, log_dir, f"intake-web-no-db-{stack.name}")
    try:
        params = _forged_return("20261125000001", dev_keys / "alipay_private_key.pem")
        status = requests.put(f"{url}/payment/status/?{urllib.parse.urlencode(params)}",
                              timeout=60)
        notify = requests.post(f"{url}/payment/alipay/notify/", timeout=60,
                               data=_notification("20261125000001",
                                                  dev_keys / "alipay_private_key.pem"))
    finally:
        web.stop()

    assert status.status_code == 503, status.text
    assert status.headers["Content-Type"] == "application/json"
    assert "moment" in status.json()["message"]
    assert (notify.status_code, notify.text) == (503, "fail")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
