"""Refunds as a ledger: staff ask, workers send and confirm with Alipay (the sandbox), the
ledger adds up, and Alipay's refund notifications are matched to it."""
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.utils import timezone

from alipay_sandbox.client import SandboxControl
from payment import gateway
from payment.models import Payment, PaymentEvent, Refund
from shop.models import OrderInfo
from tests.factories import (
    OrderFactory,
    PaymentFactory,
    StaffFactory,
    order_with_link,
    signed_in,
)
from tests.support import APP_ID, SELLER_ID, ShopClient, sign_params, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_workers"),
]

REFUND = "alipay.trade.refund"
State = Refund.State


def _staff_session(base_url: str, *, may_refund: bool = True,
                   is_staff: bool = True) -> requests.Session:
    """An API client signed in as staff (with the operators' refund permission)."""
    user = StaffFactory(is_staff=is_staff,
                        permissions=["payment.refund_payment"] if may_refund else [])
    return signed_in(ShopClient(base_url), user).session


def _refund(session: requests.Session, base_url: str, order_id: str, amount: Any,
            reason: str = "Damaged in transit", key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return session.post(f"{base_url}/orders/{order_id}/refunds/",
                        json={"amount": amount, "reason": reason}, headers=headers, timeout=20)


def _paid_order(shop: ShopClient, sandbox: SandboxControl, price: str = "100.00") -> str:
    """An order its buyer paid at the sandbox; Alipay's notification paid it here. `shop` is
    signed in as the buyer."""
    order, url = order_with_link(total_amount=Decimal(price))
    signed_in(shop, order.user)
    sandbox.pay(url)
    wait_for(lambda: _order_status(order.order_id) == OrderInfo.Status.UNSEND, 20)
    return order.order_id


def _order_status(order_id: str) -> int:
    return OrderInfo.objects.get(order_id=order_id).status


def _state(refund_id: int) -> str:
    return Refund.objects.get(pk=refund_id).state


def _wait_state(refund_id: int, state: str, timeout: float = 20) -> Refund:
    wait_for(lambda: _state(refund_id) == state, timeout, 0.05)
    return Refund.objects.get(pk=refund_id)


def _alipay_refunds(sandbox: SandboxControl, order_id: str) -> list[dict[str, Any]]:
    """The refunds the sandbox made on the order's trade, as its store recorded them."""
    return list(sandbox.trade(order_id)["refunds"])


def _succeeded_total(order_id: str) -> Decimal:
    return sum((r.amount for r in Refund.objects.filter(order_id=order_id,
                                                       state=State.SUCCEEDED)), Decimal("0"))


def test_three_partial_refunds_add_up_and_the_last_one_refunds_the_order(
    shop: ShopClient, sandbox: SandboxControl, exclusive_workers: Callable[..., Any]
) -> None:
    exclusive_workers("refund-timeouts", ALIPAY_TIMEOUT_SECONDS="1")
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)

    first = _refund(staff, shop.base_url, order_id, "30.00", "Box arrived damaged")
    assert first.status_code == 201, first.text
    assert (first.json()["amount"], first.json()["state"]) == ("30.00", "requested")
    _wait_state(first.json()["id"], State.SUCCEEDED)

    # Alipay's gateway stops answering refunds: our call times out, Alipay made nothing.
    sandbox.set_faults(error_rate=1.0, error_kind="timeout", timeout_s=3, methods=[REFUND])
    second = _refund(staff, shop.base_url, order_id, "20.00", "Late delivery")
    assert second.status_code == 201, second.text
    second_id = second.json()["id"]
    timed_out = _wait_state(second_id, State.UNKNOWN, 15)
    assert timed_out.attempts == 1 and "Timeout" in timed_out.last_error
    assert timed_out.out_request_no not in {r["out_request_no"]
                                            for r in _alipay_refunds(sandbox, order_id)}
    sandbox.clear_faults()
    retried = _wait_state(second_id, State.SUCCEEDED, 30)
    # Confirmed with the refund query (not there), then sent again with the same number.
    assert retried.attempts >= 2 and retried.queries >= 1
    assert retried.out_request_no == timed_out.out_request_no

    over = _refund(staff, shop.base_url, order_id, "50.01", "More than is left")
    assert over.status_code == 409, over.text
    assert "50.00" in over.json()["message"]
    assert Refund.objects.filter(order_id=order_id).count() == 2
    assert _order_status(order_id) == OrderInfo.Status.UNSEND

    last = _refund(staff, shop.base_url, order_id, "50.00", "The rest of the order")
    assert last.status_code == 201, last.text
    _wait_state(last.json()["id"], State.SUCCEEDED)
    wait_for(lambda: _order_status(order_id) == OrderInfo.Status.REFUNDED, 10)

    ledger = list(Refund.objects.filter(order_id=order_id).order_by("requested_at"))
    assert [(r.amount, r.state) for r in ledger] == [
        (Decimal("30.00"), State.SUCCEEDED), (Decimal("20.00"), State.SUCCEEDED),
        (Decimal("50.00"), State.SUCCEEDED)]
    assert _succeeded_total(order_id) == Decimal("100.00")
    trade = sandbox.trade(order_id)
    made = [r["out_request_no"] for r in trade["refunds"]]
    assert sorted(made) == sorted(r.out_request_no for r in ledger)  # one refund per number
    assert (trade["refund_fee"], trade["status"]) == ("100.00", "TRADE_CLOSED")
    assert Payment.objects.get(order_id=order_id).status == Payment.Status.APPLIED

    buyer_view = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"),
                                  timeout=10).json()
    assert buyer_view["status"] == "REFUNDED"
    assert [(r["amount"], r["state"]) for r in buyer_view["refunds"]] == [
        ("30.00", "succeeded"), ("20.00", "succeeded"), ("50.00", "succeeded")]
    assert shop.session.get(shop.url(f"/orders/{order_id}/"), timeout=10).json()[
        "status"] == "REFUNDED"

    # Alipay notified each refund (the last as TRADE_CLOSED): matched, nothing applied.
    def notified() -> list[PaymentEvent]:
        events = list(PaymentEvent.objects.filter(out_trade_no=order_id, source="notify",
                                                  raw_data__has_key="out_biz_no"))
        return events if len(events) == 3 and all(e.is_final for e in events) else []

    events = wait_for(notified, 20)
    assert {e.raw_data["out_biz_no"] for e in events} == set(made)
    assert {e.state for e in events} == {PaymentEvent.State.RECORDED}
    assert all(e.reason.startswith(f"refund {e.raw_data['out_biz_no']}:") for e in events)


def test_a_refund_whose_answer_was_lost_is_confirmed_by_query_not_sent_again(
    shop: ShopClient, sandbox: SandboxControl, exclusive_workers: Callable[..., Any]
) -> None:
    exclusive_workers("refund-lost-answer", ALIPAY_TIMEOUT_SECONDS="1",
                      REFUND_CONFIRM_DELAY_SECONDS="3")
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)
    # Alipay takes 2 s over every refund: it makes it, but our call has given up after 1 s.
    # Its notification is lost too, so only the refund query can tell.
    sandbox.set_faults(latency_ms=2000, methods=[REFUND], notify_drop=True)

    response = _refund(staff, shop.base_url, order_id, "40.00", "Wrong size")
    assert response.status_code == 201, response.text
    refund_id = response.json()["id"]
    unknown = _wait_state(refund_id, State.UNKNOWN, 10)
    wait_for(lambda: _alipay_refunds(sandbox, order_id), 10)  # Alipay made it all the same

    confirmed = _wait_state(refund_id, State.SUCCEEDED, 20)

    assert (confirmed.confirmed_by, confirmed.attempts) == ("query", 1)
    assert confirmed.out_request_no == unknown.out_request_no
    made = _alipay_refunds(sandbox, order_id)
    assert [(r["out_request_no"], r["refund_amount"]) for r in made] == [
        (confirmed.out_request_no, "40.00")]
    assert Refund.objects.filter(order_id=order_id).count() == 1
    assert _order_status(order_id) == OrderInfo.Status.UNSEND  # 60.00 is still paid


def test_alipay_refusing_a_refund_fails_it_and_a_refund_made_elsewhere_is_a_finding(
    shop: ShopClient, sandbox: SandboxControl, alipay_settings: dict[str, str]
) -> None:
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)
    # 70.00 refunded at Alipay outside the ledger (as from Alipay's merchant console).
    gateway.trade_refund(out_trade_no=order_id, refund_amount=Decimal("70.00"),
                        out_request_no="console-1", reason="by hand")

    def finding() -> PaymentEvent | None:
        return PaymentEvent.objects.filter(
            out_trade_no=order_id, raw_data__out_biz_no="console-1",
            state=PaymentEvent.State.RECORDED).first()

    recorded = wait_for(finding, 20)
    assert recorded.reason.startswith("finding: refund console-1")
    assert not Refund.objects.filter(order_id=order_id).exists()
    assert _order_status(order_id) == OrderInfo.Status.UNSEND

    # The ledger allows 50.00 of 100.00; Alipay has only 30.00 left and refuses.
    response = _refund(staff, shop.base_url, order_id, "50.00", "Broken handle")
    assert response.status_code == 201, response.text
    refused = _wait_state(response.json()["id"], State.FAILED)

    assert refused.sub_code == "ACQ.REASON_TRADE_REFUND_FEE_ERR"
    assert refused.attempts == 1 and refused.failed_at is not None
    assert [r["out_request_no"] for r in _alipay_refunds(sandbox, order_id)] == ["console-1"]
    buyer_view = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"),
                                  timeout=10).json()
    assert [(r["amount"], r["state"]) for r in buyer_view["refunds"]] == [("50.00", "failed")]
    # A refused refund no longer counts: the ledger lets the whole 100.00 be asked for again.
    again = _refund(staff, shop.base_url, order_id, "100.00", "Everything")
    assert again.status_code == 201, again.text


def test_the_same_idempotency_key_makes_one_refund(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)

    first = _refund(staff, shop.base_url, order_id, "12.50", "Missing part", key="rf-0001")
    again = _refund(staff, shop.base_url, order_id, "12.50", "Missing part", key="rf-0001")
    other = _refund(staff, shop.base_url, order_id, "13.00", "Missing part", key="rf-0001")

    assert (first.status_code, again.status_code) == (201, 200)
    same = ("id", "out_request_no", "amount", "reason", "requested_at")
    assert {k: again.json()[k] for k in same} == {k: first.json()[k] for k in same}
    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in other.json()["message"]
    refund = Refund.objects.get(order_id=order_id)
    assert (refund.idempotency_key, refund.amount) == ("rf-0001", Decimal("12.50"))
    _wait_state(refund.pk, State.SUCCEEDED)
    assert len(_alipay_refunds(sandbox, order_id)) == 1

    # The same key sent by several clients at once still makes that one refund.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _refund(staff, shop.base_url, order_id, "7.00",
                                                  "Second part", key="rf-0002"), range(6)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert Refund.objects.filter(order_id=order_id).count() == 2


def _refund_raw(base_url: str, session: requests.Session, order_id: str, body: bytes,
                headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """A refund request sent as written: the same header twice, a JSON number as typed."""
    url = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=20)
    try:
        connection.putrequest("POST", f"/orders/{order_id}/refunds/")
        for name, value in [("Authorization", str(session.headers["Authorization"])),
                            ("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))), *headers]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("server", ["asgi_web", "web"], ids=["production-asgi", "wsgi"])
def test_two_idempotency_key_headers_are_refused(
    request: pytest.FixtureRequest, server: str
) -> None:
    """Two Idempotency-Key headers reach the view joined with a comma: never taken as a key."""
    base_url = request.getfixturevalue(server)
    order = _paid_order_rows()
    staff = _staff_session(base_url)
    body = json.dumps({"amount": "10.00", "reason": "Broken"}).encode()

    answers = [_refund_raw(base_url, staff, order.order_id, body,
                           [("Idempotency-Key", first), ("Idempotency-Key", second)])
               for first, second in [("rf-a", "rf-b"), ("rf-a", "rf-a")]]

    for code, answer in answers:
        assert code == 400, answer
        assert "one Idempotency-Key header" in answer["message"]
    assert not Refund.objects.exists()


def test_idempotency_keys_are_each_staff_members_own(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    """A key names a request of the member who sent it: another member sending the same key
    gets a refund of their own, never the first member's."""
    order_id = _paid_order(shop, sandbox)
    first_staff, second_staff, third_staff = (_staff_session(shop.base_url) for _ in range(3))

    first = _refund(first_staff, shop.base_url, order_id, "10.00", "Missing part", key="rf-1")
    second = _refund(second_staff, shop.base_url, order_id, "10.00", "Missing part", key="rf-1")
    third = _refund(third_staff, shop.base_url, order_id, "5.00", "Scratched", key="rf-1")
    first_again = _refund(first_staff, shop.base_url, order_id, "10.00", "Missing part",
                          key="rf-1")

    assert (first.status_code, second.status_code, third.status_code,
            first_again.status_code) == (201, 201, 201, 200), (second.text, third.text)
    assert len({first.json()["id"], second.json()["id"], third.json()["id"]}) == 3
    assert first_again.json()["id"] == first.json()["id"]
    ledger = list(Refund.objects.filter(order_id=order_id).order_by("id"))
    assert [(r.amount, r.idempotency_key) for r in ledger] == [
        (Decimal("10.00"), "rf-1"), (Decimal("10.00"), "rf-1"), (Decimal("5.00"), "rf-1")]
    assert len({r.requested_by_id for r in ledger}) == 3
    wait_for(lambda: _succeeded_total(order_id) == Decimal("25.00"), 30)
    assert sorted(r["out_request_no"] for r in _alipay_refunds(sandbox, order_id)) == sorted(
        r.out_request_no for r in ledger)


# Amounts sent as JSON strings, then JSON numbers as written in the body.
NOT_AMOUNTS = [json.dumps(text) for text in [
    "099.00", "00.50", "010", " 10.00", "10.00 ", "\u00a010.00", "10.00\u00a0",
    "\u300010.00", "10.00\u3000", "\t10.00", "10.00\n", "1e1", "1E1", "\uff11.\uff10\uff10",
    "\u0663.\u0660\u0660", "10.", ".50", "+10.00", "1_000.00", "1,000.00", "0.00", "0.001",
    "100000000.00",
]] + ["1e1", "1E+1", "1.0e1", "0.1e2", "10.000", "-1", "0"]


def test_refund_amounts_with_leading_zeros_whitespace_or_exponents_are_400(web: str) -> None:
    order = _paid_order_rows()
    staff = _staff_session(web)

    answers = {amount: _refund_raw(web, staff, order.order_id,
                                   f'{{"amount": {amount}, "reason": "Broken"}}'.encode(), [])
               for amount in NOT_AMOUNTS}

    taken = {amount: answer for amount, (code, answer) in answers.items()
             if code != 400 or "such as 12.50" not in answer["message"]}
    assert not taken
    assert not Refund.objects.exists()


def test_refund_amounts_in_plain_digits_are_taken(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)

    answers = [_refund_raw(shop.base_url, staff, order_id,
                           f'{{"amount": {amount}, "reason": "Part {i}"}}'.encode(), [])
               for i, amount in enumerate(['"10"', '"10.5"', '"0.01"', "12.5", "3", '"0.50"'])]

    assert [(code, answer.get("amount")) for code, answer in answers] == [
        (201, "10.00"), (201, "10.50"), (201, "0.01"), (201, "12.50"), (201, "3.00"),
        (201, "0.50")]
    assert sum(r.amount for r in Refund.objects.filter(order_id=order_id)) == Decimal("36.51")
    wait_for(lambda: _succeeded_total(order_id) == Decimal("36.51"), 30)


def test_only_staff_allowed_to_refund_may_ask(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    url = shop.url(f"/orders/{order_id}/refunds/")
    body = {"amount": "10.00", "reason": "I want my money"}

    buyer = shop.session.post(url, json=body, timeout=10)  # the order's own buyer
    anonymous = requests.post(url, json=body, timeout=10)
    staff_without = _refund(_staff_session(shop.base_url, may_refund=False),
                            shop.base_url, order_id, "10.00")
    not_staff = _refund(_staff_session(shop.base_url, is_staff=False),
                        shop.base_url, order_id, "10.00")

    assert (buyer.status_code, anonymous.status_code) == (403, 401)
    assert (staff_without.status_code, not_staff.status_code) == (403, 403)
    assert "staff" in buyer.json()["message"]
    assert not Refund.objects.exists()


@pytest.mark.parametrize(("amount", "reason"), [
    ("0", "x"), ("-5.00", "x"), ("1.234", "x"), ("abc", "x"), ("NaN", "x"), ("Infinity", "x"),
    ("1e3", "x"), ("１０.００", "x"), ("123456789012.00", "x"), (None, "x"), (True, "x"),
    ([1], "x"), ("10.00", ""), ("10.00", "   "), ("10.00", "r" * 257), ("10.00", None),
])
def test_bad_amounts_and_reasons_are_400(
    web: str, amount: Any, reason: str
) -> None:
    order = _paid_order_rows()
    staff = _staff_session(web)

    response = _refund(staff, web, order.order_id, amount, reason)

    assert response.status_code == 400, response.text
    assert response.json()["message"]
    assert not Refund.objects.exists()


def test_refunds_that_cannot_be_made_are_refused_with_a_reason(web: str) -> None:
    staff = _staff_session(web)
    paid = _paid_order_rows()
    unpaid = OrderFactory(user=paid.user, total_amount=Decimal("5.00"))

    not_paid = _refund(staff, web, unpaid.order_id, "5.00")
    too_much = _refund(staff, web, paid.order_id, "100.01")
    no_order = _refund(staff, web, "20260101000000000000000000042", "5.00")
    bad_key = _refund(staff, web, paid.order_id, "5.00", key="has space")
    long_key = _refund(staff, web, paid.order_id, "5.00", key="k" * 201)

    assert not_paid.status_code == 409 and "not paid" in not_paid.json()["message"]
    assert too_much.status_code == 409 and "100.00" in too_much.json()["message"]
    assert no_order.status_code == 404
    assert (bad_key.status_code, long_key.status_code) == (400, 400)
    assert "Idempotency-Key" in bad_key.json()["message"]
    assert not Refund.objects.exists()


def test_parallel_refund_requests_never_exceed_the_paid_amount(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)
    start = threading.Barrier(10)

    def ask(index: int) -> int:
        start.wait()
        return _refund(staff, shop.base_url, order_id, "30.00", f"Request {index}").status_code

    with ThreadPoolExecutor(10) as pool:
        codes = sorted(pool.map(ask, range(10)))

    assert codes == [201] * 3 + [409] * 7
    ledger = list(Refund.objects.filter(order_id=order_id))
    assert len(ledger) == 3 and sum(r.amount for r in ledger) == Decimal("90.00")
    assert len({r.out_request_no for r in ledger}) == 3
    wait_for(lambda: _succeeded_total(order_id) == Decimal("90.00"), 30)
    assert sandbox.trade(order_id)["refund_fee"] == "90.00"
    assert _order_status(order_id) == OrderInfo.Status.UNSEND


def _paid_order_rows(amount: str = "100.00") -> OrderInfo:
    """An order paid by a payment row, as the workers leave it (no trade at the sandbox)."""
    return PaymentFactory(order__total_amount=Decimal(amount)).order


def _refund_row(order: OrderInfo, number: int, amount: str, state: str) -> Refund:
    """A refund the workers sent and heard nothing back about (not due again for an hour)."""
    return Refund.objects.create(
        order=order, payment=order.payments.get(), amount=Decimal(amount), reason="Broken",
        out_request_no=f"{order.order_id}R{number:02d}", source=Refund.Source.STAFF_API,
        state=state, attempts=1, next_attempt_at=timezone.now() + timedelta(hours=1),
    )


def _notify(web: str, order: OrderInfo, key: Path, notify_id: str, trade_status: str,
            refund_fee: str, out_biz_no: str | None) -> requests.Response:
    params = {
        "notify_type": "trade_status_sync", "notify_id": notify_id, "app_id": APP_ID,
        "notify_time": "2026-11-26 12:00:00", "charset": "utf-8", "version": "1.0",
        "out_trade_no": order.order_id, "trade_no": order.payments.get().trade_id,
        "trade_status": trade_status, "total_amount": f"{order.total_amount}",
        "seller_id": SELLER_ID, "refund_fee": refund_fee, "gmt_refund": "2026-11-26 12:00:00",
        "gmt_payment": "2026-11-26 11:00:00",
    }
    if out_biz_no:
        params["out_biz_no"] = out_biz_no
    signed = sign_params(params, (key / "alipay_private_key.pem").read_bytes())
    return requests.post(f"{web}/payment/alipay/notify/", data=signed, timeout=10)


def _event(notify_id: str) -> PaymentEvent:
    return wait_for(lambda: PaymentEvent.objects.filter(
        dedupe_key=f"notify:{notify_id}", state=PaymentEvent.State.RECORDED).first(), 15)


def test_refund_notifications_are_matched_to_the_ledger(web: str, dev_keys: Path) -> None:
    order = _paid_order_rows()
    partial = _refund_row(order, 1, "40.00", State.UNKNOWN)
    full = _refund_row(order, 2, "60.00", State.SENT)

    # A partial refund: TRADE_SUCCESS with the refunds so far and the refund's number.
    answer = _notify(web, order, dev_keys, "rn-1", "TRADE_SUCCESS", "40.00",
                     partial.out_request_no)
    assert (answer.status_code, answer.text) == (200, "success")
    assert _event("rn-1").reason == f"refund {partial.out_request_no}: succeeded (refund_fee 40.00)"
    partial.refresh_from_db()
    assert (partial.state, partial.confirmed_by) == (State.SUCCEEDED, "notification")
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.UNSEND

    # Told again (another notification of the same refund): nothing changes.
    _notify(web, order, dev_keys, "rn-2", "TRADE_SUCCESS", "40.00", partial.out_request_no)
    assert _event("rn-2").reason == f"refund {partial.out_request_no}: already succeeded"
    assert Refund.objects.get(pk=partial.pk).succeeded_at == partial.succeeded_at

    # A refund nobody here asked for: recorded, logged, no money moved in the ledger.
    _notify(web, order, dev_keys, "rn-3", "TRADE_SUCCESS", "45.00", "elsewhere-7")
    assert _event("rn-3").reason.startswith("finding: refund elsewhere-7")
    assert Refund.objects.filter(order=order).count() == 2

    # The full refund closes the trade: TRADE_CLOSED, and the order is refunded.
    _notify(web, order, dev_keys, "rn-4", "TRADE_CLOSED", "100.00", full.out_request_no)
    assert _event("rn-4").reason.startswith(f"refund {full.out_request_no}: succeeded")
    assert Refund.objects.get(pk=full.pk).state == State.SUCCEEDED
    assert OrderInfo.objects.get(pk=order.pk).status == OrderInfo.Status.REFUNDED
    payment = Payment.objects.get(order=order)
    assert (payment.status, payment.refunded_at is not None) == (Payment.Status.APPLIED, True)

    # Later notifications name no refund, only the refunds so far: checked against the ledger.
    _notify(web, order, dev_keys, "rn-5", "TRADE_FINISHED", "100.00", None)
    assert _event("rn-5").reason.endswith("agrees with the ledger")
    _notify(web, order, dev_keys, "rn-6", "TRADE_FINISHED", "120.00", None)
    assert _event("rn-6").reason.startswith("finding: TRADE_FINISHED notification with "
                                            "refund_fee 120.00, the ledger has 100.00")
    assert Refund.objects.filter(order=order).count() == 2
    assert not PaymentEvent.objects.filter(order=order, state=PaymentEvent.State.APPLIED).exists()


def test_buyers_see_their_refunds_without_staff_details(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    staff = _staff_session(shop.base_url)
    assert _refund(staff, shop.base_url, order_id, "25.00", "Scratched lid").status_code == 201

    status = shop.session.get(shop.url(f"/orders/{order_id}/payment/status/"), timeout=10)

    refunds = status.json()["refunds"]
    assert len(refunds) == 1
    assert set(refunds[0]) == {"amount", "state", "reason", "requested_at", "succeeded_at"}
    assert (refunds[0]["amount"], refunds[0]["reason"]) == ("25.00", "Scratched lid")
    assert refunds[0]["state"] in ("processing", "succeeded")


@pytest.mark.usefixtures("celery_beat")
def test_the_sweeper_takes_up_refunds_left_without_a_worker(
    shop: ShopClient, sandbox: SandboxControl
) -> None:
    order_id = _paid_order(shop, sandbox)
    order = OrderInfo.objects.get(order_id=order_id)
    # Stored, but its message to the workers never left (the broker was away then).
    stranded = Refund.objects.create(
        order=order, payment=order.payments.get(), amount=Decimal("15.00"), reason="Dented",
        out_request_no=f"{order_id}R01", source=Refund.Source.STAFF_API,
        next_attempt_at=timezone.now() - timedelta(seconds=30),
    )
    # A late payment kept from before the ledger: refund pending, no refund row.
    sandbox.set_faults(notify_drop=True)
    late_order, late_url = order_with_link(total_amount=Decimal("8.80"))
    late_id = late_order.order_id
    paid = sandbox.pay(late_url)
    OrderInfo.objects.filter(order_id=late_id).update(status=OrderInfo.Status.CANCELED)
    late = PaymentFactory(order=late_order, trade_id=paid["trade_no"], source="query",
                          status=Payment.Status.REFUND_PENDING)
    Payment.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(minutes=1))

    _wait_state(stranded.pk, State.SUCCEEDED, 20)
    wait_for(lambda: Payment.objects.get(pk=late.pk).status == Payment.Status.REFUNDED, 20)

    made = Refund.objects.get(payment=late)
    assert (made.source, made.state, made.amount) == (
        Refund.Source.LATE_PAYMENT, State.SUCCEEDED, Decimal("8.80"))
    assert sandbox.trade(late_id)["refund_fee"] == "8.80"
    assert OrderInfo.objects.get(order_id=late_id).status == OrderInfo.Status.CANCELED
