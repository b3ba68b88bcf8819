"""The wake-up a worker hands a waiting return (payment/wakeups.py): the event's outcome, so
that the request answers without reading the database again; a wake-up that says nothing
(an older worker's, or one for an event another worker settled) leaves the request to read it."""
import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.db import transaction

from infra import redis_client
from payment import wakeups
from payment.intake.core import handed_answer
from payment.models import EventState


@pytest.mark.parametrize(("item", "status", "body"), [
    (b"applied:applied", 200, {"trade_id": "T1"}),
    (b"applied:refund_pending", 409, {"refund": "refund_pending"}),
    (b"rejected", 403, {"message": "The payment could not be verified with Alipay."}),
    (b"dead", 403, {"order_id": "O1"}),
    (b"recorded", 403, {"order_id": "O1"}),
])
def test_a_handed_outcome_is_the_answer(item: bytes, status: int, body: dict[str, str]) -> None:
    answer = handed_answer(wakeups.outcome_parse(item), order_id="O1", trade_no="T1")

    assert answer is not None
    assert answer.status == status
    assert body.items() <= answer.body.items()


@pytest.mark.parametrize("item", [None, b"1", b"applied", b"received", b"nonsense:x"])
def test_an_outcome_that_does_not_say_enough_leaves_the_database_to_answer(
        item: bytes | None) -> None:
    assert handed_answer(wakeups.outcome_parse(item), order_id="O1", trade_no="T1") is None


@pytest.fixture
def redis_url(settings: Any) -> str:
    url = str(settings.PAYMENT_REDIS_URL)
    if not url.startswith("redis://"):
        pytest.skip("needs PAYMENT_REDIS_URL (the broker's Redis)")
    return url


@pytest.mark.django_db(transaction=True)
def test_every_waiter_is_handed_the_outcome_once_the_batch_commits(redis_url: str) -> None:
    event_id = uuid.uuid4().int % 10**9 + 10**9

    with transaction.atomic():
        wakeups.events_settled(outcomes={
            event_id: wakeups.outcome_text(EventState.APPLIED, "applied")})
        # Not before the commit: a waiter must not read a row the batch may roll back.
        assert redis.Redis.from_url(redis_url).llen(f"payment:settled:{event_id}") == 0

    async def two_waiters() -> list[tuple[str, str] | None]:
        redis_client.server_loop_started(asyncio.get_running_loop())
        try:
            return [await wakeups.event_settled_wait(
                event_id=event_id, timeout=2, is_settled=_never) for _ in range(2)]
        finally:
            await redis_client.server_loop_stopping(asyncio.get_running_loop())

    # On a loop of its own thread: a browser test may leave a loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        handed = thread.submit(lambda: asyncio.run(two_waiters())).result()

    assert handed == [("applied", "applied"), ("applied", "applied")]


async def _never() -> bool:
    return False


@pytest.mark.django_db(transaction=True)
def test_waiters_blocked_before_the_outcome_all_get_it_and_it_still_expires(
    redis_url: str,
) -> None:
    event_id = uuid.uuid4().int % 10**9 + 2 * 10**9
    key = f"payment:settled:{event_id}"

    async def three_waiting_then_a_push() -> list[tuple[str, str] | None]:
        redis_client.server_loop_started(asyncio.get_running_loop())
        try:
            waiting = [asyncio.create_task(wakeups.event_settled_wait(
                event_id=event_id, timeout=3, is_settled=_never)) for _ in range(3)]
            await asyncio.sleep(0.3)  # all three blocked on the empty list
            await asyncio.to_thread(wakeups._push, {event_id: wakeups.outcome_text(
                EventState.REJECTED)})
            return list(await asyncio.gather(*waiting))
        finally:
            await redis_client.server_loop_stopping(asyncio.get_running_loop())

    with ThreadPoolExecutor(1) as thread:
        handed = thread.submit(lambda: asyncio.run(three_waiting_then_a_push())).result()

    assert handed == [("rejected", "")] * 3
    server = redis.Redis.from_url(redis_url)
    assert server.llen(key) == 1  # taken and put back: still there for a late reload
    assert 0 < server.ttl(key) <= wakeups.KEY_TTL  # and gone within a minute
