"""The two intake endpoints as a plain ASGI app on PostgreSQL: the path bursts take.

`PUT /payment/status/` and `POST /payment/alipay/notify/` do the same as the Django views in
payment/api/views.py (the same parsing, checks, SQL and answers from payment/intake/core.py and
payment/event_store.py) without Django's request machinery: on the event loop, with an async
PostgreSQL pool, no thread per request. Under Django's ASGI handler each request cost
about 1.6 ms of CPU before the view ran, more than the intake's own work.
"""
import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
from django.conf import settings

from infra.logs import log_ids
from payment import event_store, metrics, wakeups
from payment.errors import PaymentError, Throttled
from payment.intake import core, throttle
from payment.models import EventSource, EventState

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STATUS_PATH = "/payment/status/"
NOTIFY_PATH = "/payment/alipay/notify/"
PATHS = frozenset({STATUS_PATH, NOTIFY_PATH})

_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, psycopg_pool.AsyncConnectionPool]" = (
    weakref.WeakKeyDictionary()
)


def available() -> bool:
    return bool(settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql")


def _conninfo() -> str:
    db = settings.DATABASES["default"]
    parts = {"dbname": db["NAME"], "user": db.get("USER"), "password": db.get("PASSWORD"),
             "host": db.get("HOST"), "port": db.get("PORT")}
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items() if v})


async def _pool() -> psycopg_pool.AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = psycopg_pool.AsyncConnectionPool(
            _conninfo(), min_size=2, max_size=settings.DATABASE_POOL_SIZE, timeout=10,
            kwargs={"autocommit": True}, open=False,
        )
        await pool.open()
    return pool


async def pools_close() -> None:
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


async def _fetch(sql: str, values: list[Any]) -> tuple[Any, ...] | None:
    pool = await _pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, values)
        return await cursor.fetchone()


async def _store(**kwargs: Any) -> event_store.StoredEvent:
    sql, values = event_store.insert_statement(**kwargs)
    row = await _fetch(sql, values)
    assert row is not None
    return event_store.stored(row, kwargs["source"], str(kwargs["params"].get("out_trade_no", "")),
                         str(kwargs["params"].get("trade_no", "")))


async def _refusal(source: str, params: dict[str, Any], remote_addr: str | None,
                   error: PaymentError) -> PaymentError:
    """core.refusal on the event loop."""
    if isinstance(error, Throttled):
        return error
    if not await throttle.REFUSED.aallow(remote_addr):
        return core.throttled(throttle.REFUSED, source, remote_addr)
    metrics.event_received(source=source, outcome="refused")
    sql, values = event_store.refusal_statement(source=source, params=params,
                                           remote_addr=remote_addr, reason=str(error))
    row = await _fetch(sql, values)
    assert row is not None
    core.refusal_note(source, params, remote_addr, error, int(row[0]))
    return error


async def _payment_status(trade_no: str, order_id: str) -> str | None:
    row = await _fetch(core.PAYMENT_STATUS_SQL, [trade_no, order_id])
    return None if row is None else str(row[0])


async def _event_answer(event_id: int) -> core.Answer:
    row = await _fetch(core.EVENT_SQL, [event_id])
    assert row is not None
    state, order_id, trade_no = row
    status = await _payment_status(trade_no, order_id) if state == EventState.APPLIED else None
    return core.event_answer(state=state, order_id=order_id, trade_no=trade_no,
                               payment_status=status)


async def _is_settled(event_id: int) -> bool:
    row = await _fetch(core.EVENT_SQL, [event_id])
    return row is not None and row[0] != EventState.RECEIVED


async def return_receive(params: dict[str, str], remote_addr: str | None) -> core.Answer:
    """core.return_receive, then the wait for the workers' outcome."""
    core.params_authenticate(params)
    order_id, trade_no = params["out_trade_no"], params.get("trade_no", "")
    answer = core.payment_answer(status=await _payment_status(trade_no, order_id),
                                   trade_no=trade_no, order_id=order_id)
    if answer is not None:
        metrics.event_received(source=EventSource.RETURN, outcome="duplicate")
        return answer
    stored = await _store(source=EventSource.RETURN, params=params, remote_addr=remote_addr)
    if stored.state != EventState.RECEIVED:
        return await _event_answer(stored.id)
    core.workers_wake()
    await wakeups.event_settled_wait(event_id=stored.id, timeout=settings.PAYMENT_STATUS_WAIT,
                                     is_settled=lambda: _is_settled(stored.id))
    return await _event_answer(stored.id)


async def notification_receive(params: dict[str, str], remote_addr: str | None) -> None:
    core.params_authenticate(params)
    metrics.notify_lag_observe(params.get("notify_time", ""))
    stored = await _store(source=EventSource.NOTIFY, params=params, remote_addr=remote_addr)
    if stored.state == EventState.RECEIVED:
        core.workers_wake()


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI app for PATHS."""
    body = await _body(receive)
    if body is None:
        metrics.event_received(source=EventSource.NOTIFY if scope["path"] == NOTIFY_PATH
                               else EventSource.RETURN, outcome="refused")
        if scope["path"] == NOTIFY_PATH:
            await _respond(send, 413, b"fail", "text/plain")
        else:
            await _respond(send, 413, json.dumps({"message": "The request body is too large."})
                           .encode(), "application/json")
        return
    remote_addr = scope["client"][0] if scope.get("client") else None
    headers = dict(scope["headers"])
    content_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
    if scope["path"] == NOTIFY_PATH:
        if scope["method"] != "POST":
            await _respond(send, 405, b"", "text/plain", allow=b"POST")
            return
        status, text = await _notify(scope, body, content_type, remote_addr)
        await _respond(send, status, text, "text/plain")
        return
    if scope["method"] not in ("PUT", "POST"):
        await _respond(send, 405, b"", "text/plain", allow=b"PUT, POST")
        return
    answer = await _status(scope, body, content_type, remote_addr)
    await _respond(send, answer.status, json.dumps(answer.body).encode(), "application/json",
                   retry_after=answer.retry_after)


async def _notify(scope: dict[str, Any], body: bytes, content_type: str,
                  remote_addr: str | None) -> tuple[int, bytes]:
    params: dict[str, str] = {}
    try:
        try:
            if content_type not in (core.FORM, ""):
                raise PaymentError("A notification is a form.")
            params = core.params_clean(core.params_parse(query=b"", body=body,
                                                             content_type=content_type))
            await notification_receive(params, remote_addr)
        except PaymentError as exc:
            error = await _refusal(EventSource.NOTIFY, params, remote_addr, exc)
            return (429 if isinstance(error, Throttled) else 400), b"fail"
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        metrics.event_received(source=EventSource.NOTIFY, outcome="error")
        logger.error("notification not stored out_trade_no=%s error=%s",
                     params.get("out_trade_no"), type(exc).__name__,
                     extra=log_ids(order_id=params.get("out_trade_no"),
                                   trade_no=params.get("trade_no")))
        return 503, b"fail"
    return 200, b"success"


async def _status(scope: dict[str, Any], body: bytes, content_type: str,
                  remote_addr: str | None) -> core.Answer:
    params: dict[str, str] = {}
    try:
        try:
            if not await throttle.STATUS.aallow(remote_addr):
                raise core.throttled(throttle.STATUS, EventSource.RETURN, remote_addr)
            params = core.params_clean(core.params_parse(
                query=scope.get("query_string", b""), body=body, content_type=content_type))
            return await return_receive(params, remote_addr)
        except PaymentError as exc:
            refusal = await _refusal(EventSource.RETURN, params, remote_addr, exc)
            return core.refused_answer(refusal)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        metrics.event_received(source=EventSource.RETURN, outcome="error")
        logger.error("return not stored out_trade_no=%s error=%s", params.get("out_trade_no"),
                     type(exc).__name__, extra=log_ids(order_id=params.get("out_trade_no"),
                                                       trade_no=params.get("trade_no")))
        return core.Answer(503, {"message": "Payments cannot be checked right now; "
                                              "reload this page in a moment."})


async def _body(receive: Receive) -> bytes | None:
    """The request body, or None past core.MAX_BODY_SIZE (read to its end)."""
    limit = min(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or core.MAX_BODY_SIZE,
                core.MAX_BODY_SIZE)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks) if size <= limit else None


async def _respond(send: Send, status: int, body: bytes, content_type: str,
                   allow: bytes | None = None, retry_after: int = 0) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", allow))
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
