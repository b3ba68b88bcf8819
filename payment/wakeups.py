"""Waking the requests that wait for an event's outcome, without a thread or a poll.

A worker that settles events pushes one item per event onto a short-lived Redis list
(`payment:settled:<id>`), after its transaction commits: the event's outcome (its state, and
the status of its payment when the worker knows it), so that the request answers without
reading the database again. A waiting request blocks on that list with `BLMOVE` from the
event loop (no thread held), which puts the item back for any other request waiting on the
same event. The list outlives the push for a minute, so a request that
starts waiting just after the worker finished returns at once. Without Redis (the embedded
defaults) the request polls the database from the event loop instead.
"""
import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis
from django.db import transaction

from infra import redis_client

logger = logging.getLogger(__name__)

KEY_TTL = 60


def _key(event_id: int) -> str:
    return f"payment:settled:{event_id}"


UNKNOWN = "1"


def outcome_text(state: str, payment_status: str = "") -> str:
    """What a settled event's waiters are handed: its state, and for an applied one the
    status of its payment when the worker knows it (`applied:applied`)."""
    return f"{state}:{payment_status}" if payment_status else state


def outcome_parse(item: bytes | str | None) -> tuple[str, str] | None:
    """(state, payment status or '') from a handed outcome; None when it says nothing (a
    wake-up without one, as an older worker pushes it)."""
    if item is None:
        return None
    text = item.decode() if isinstance(item, bytes) else item
    if text == UNKNOWN:
        return None
    state, _, payment_status = text.partition(":")
    return state, payment_status


def events_settled(*, outcomes: dict[int, str]) -> None:
    """Wake whoever waits for these events (event id -> outcome_text), once the current
    transaction commits."""
    if outcomes and redis_client.enabled():
        transaction.on_commit(lambda: _push(outcomes))


def _push(outcomes: dict[int, str]) -> None:
    try:
        pipe = redis_client.sync_client().pipeline(transaction=False)
        for event_id, outcome in outcomes.items():
            pipe.rpush(_key(event_id), outcome)
            pipe.expire(_key(event_id), KEY_TTL)
        pipe.execute()
    except redis.RedisError as exc:
        # Only a waiting request loses: it answers "processing" and the buyer's page polls.
        logger.warning("could not wake waiting requests count=%s error=%s",
                       len(outcomes), type(exc).__name__)


WAKE_PENDING = "payment:wake-pending"
WAKE_PENDING_TTL_MS = 1000


def workers_wake_claim() -> bool:
    """Whether to publish a wake-up now: not while another one waits to be taken.

    A waiting wake-up will claim every event committed before its task starts, so a second
    one adds only an empty task; under a burst those took the workers' whole CPU. The flag
    expires, so a wake-up lost on its way cannot hold the next one back for long.
    """
    if not redis_client.enabled():
        return True
    try:
        return bool(redis_client.sync_client().set(WAKE_PENDING, 1, nx=True,
                                                  px=WAKE_PENDING_TTL_MS))
    except redis.RedisError:
        return True


def workers_wake_taken() -> None:
    """A wake-up's task has started: the next event needs a wake-up of its own."""
    if redis_client.enabled():
        try:
            redis_client.sync_client().delete(WAKE_PENDING)
        except redis.RedisError:
            pass


async def event_settled_wait(
    *, event_id: int, timeout: float, is_settled: Callable[[], Awaitable[bool]]
) -> tuple[str, str] | None:
    """Return when the event is settled or `timeout` seconds have passed: with the outcome
    the worker handed over (state, payment status), or None (then read the database)."""
    if timeout <= 0:
        return None
    if not redis_client.enabled():
        await _poll(timeout, is_settled)
        return None
    try:
        async with redis_client.async_client() as client:
            # Taken from the head and put back at the tail in one step (the list never
            # empties, so it keeps the worker's expiry): the next request waiting for the
            # same event finds it too.
            # (redis-py's hint says int; Redis takes seconds with decimals, as BLPOP did.)
            found = await client.blmove(_key(event_id), _key(event_id),
                                        timeout,  # type: ignore[arg-type]
                                        src="LEFT", dest="RIGHT")
            return outcome_parse(found)
    except redis.RedisError as exc:
        logger.warning("waiting through Redis failed event_id=%s error=%s; polling",
                       event_id, type(exc).__name__)
        await _poll(timeout, is_settled)
        return None


async def _poll(timeout: float, is_settled: Callable[[], Awaitable[bool]]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    while not await is_settled():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.25)
