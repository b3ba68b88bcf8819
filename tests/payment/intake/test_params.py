"""Reading what arrived, and the HTTP plumbing's body rules: pure functions, no database, no
process (payment/intake/params.py, payment/intake/asgi.py, payment/intake/core.py)."""
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from payment.errors import PaymentError, SignatureInvalid, Throttled
from payment.intake import core
from payment.intake.asgi import BodyIncomplete, BodyTooLarge, body_read
from payment.intake.params import (
    FORM,
    JSON,
    media_type,
    params_authenticate,
    params_clean,
    params_parse,
)


@pytest.mark.parametrize(("header", "expected"), [
    ("application/x-www-form-urlencoded", FORM),
    ("Application/X-WWW-Form-Urlencoded; Charset=UTF-8", FORM),
    ("  APPLICATION/JSON ;charset=utf-8", JSON),
    ("", ""),
])
def test_media_type_is_the_type_without_parameters_in_lower_case(header: str,
                                                                 expected: str) -> None:
    assert media_type(header) == expected


def test_query_and_form_body_are_merged_and_the_body_wins() -> None:
    params = params_parse(query="out_trade_no=1&a=query", body=b"a=body&b=2", content_type=FORM)
    assert params_clean(params) == {"out_trade_no": "1", "a": "body", "b": "2"}


def test_a_gbk_form_is_decoded_as_gbk() -> None:
    body = b"charset=gbk&subject=" + "商品".encode("gbk")
    assert params_clean(params_parse(query=b"", body=body, content_type=FORM))["subject"] == "商品"


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"{not json", JSON, "not valid JSON"),
    (b"[1, 2]", JSON, "form or a JSON object"),
    (b"<xml/>", "application/xml", "form or a JSON object"),
    (b"charset=klingon&a=1", FORM, "charset"),
    (b"[" * 60_000, JSON, "not valid JSON"),
])
def test_unreadable_bodies_are_refused_with_a_reason(body: bytes, content_type: str,
                                                    message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        params_parse(query=b"", body=body, content_type=content_type)


@pytest.mark.parametrize(("raw", "message"), [
    ({f"k{i}": "v" for i in range(65)}, "Too many parameters"),
    ({"a": {"nested": "x"}}, "must be text"),
    ({"a": "x" * 5000}, "too long"),
    ({f"k{i}": "x" * 4000 for i in range(5)}, "too large"),
])
def test_parameters_unlike_alipays_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PaymentError, match=message):
        params_clean(raw)


def test_a_repeated_parameter_counts_once_with_its_last_value() -> None:
    assert params_clean({"a": ["1", "2"], "b": []}) == {"a": "2", "b": ""}


@pytest.mark.parametrize(("params", "message"), [
    ({"out_trade_no": "1"}, "sign and out_trade_no are required"),
    ({"sign": "x" * 20}, "sign and out_trade_no are required"),
    ({"sign": "x" * 20, "out_trade_no": "1; DROP"}, "letters, digits or underscores"),
    ({"sign": "not base64!", "out_trade_no": "1"}, "not a base64 signature"),
])
def test_the_shape_is_checked_before_the_signature(params: dict[str, str], message: str) -> None:
    with pytest.raises(PaymentError, match=message) as refused:
        params_authenticate(params)
    assert not isinstance(refused.value, SignatureInvalid)


def _receive(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)
    return receive


def _read(headers: dict[bytes, bytes], *messages: dict[str, Any], limit: int = 100) -> bytes:
    # On a thread of its own: a browser test's Playwright keeps a loop in the main thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, body_read(_receive(*messages), headers, limit)).result()


def test_a_body_in_chunks_is_read_whole() -> None:
    assert _read({b"content-length": b"6"},
                 {"type": "http.request", "body": b"abc", "more_body": True},
                 {"type": "http.request", "body": b"def"}) == b"abcdef"


def test_a_body_announced_above_the_limit_is_refused_before_it_is_read() -> None:
    with pytest.raises(BodyTooLarge):
        _read({b"content-length": b"101"})  # no message: reading one would fail the test


def test_a_body_past_the_limit_without_a_length_is_refused_as_it_passes_it() -> None:
    with pytest.raises(BodyTooLarge):
        _read({}, {"type": "http.request", "body": b"x" * 60, "more_body": True},
              {"type": "http.request", "body": b"x" * 60, "more_body": True})


@pytest.mark.parametrize("messages", [
    [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}],
    [{"type": "http.request", "body": b"abc"}],
])
def test_a_body_shorter_than_its_length_is_incomplete(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(BodyIncomplete):
        _read({b"content-length": b"6"}, *messages)


def test_answers_keep_the_seeds_contract() -> None:
    assert core.payment_answer(status=None, trade_no="T", order_id="1") is None
    assert core.payment_answer(status="applied", trade_no="T", order_id="1") == core.Answer(
        200, {"trade_id": "T"})
    late = core.payment_answer(status="refund_pending", trade_no="T", order_id="1")
    assert late is not None and (late.status, late.body["refund"]) == (409, "refund_pending")
    assert core.event_answer(state="received", order_id="1", trade_no="T",
                             payment_status=None) == core.processing_answer("1")
    assert core.event_answer(state="rejected", order_id="1", trade_no="T",
                             payment_status=None).status == 403
    assert core.refused_answer(Throttled(7)) == core.Answer(429, {"message": str(Throttled(7))},
                                                            retry_after=7)
    assert core.notification_refused_answer(PaymentError("x")) == core.Answer(400, text="fail")
