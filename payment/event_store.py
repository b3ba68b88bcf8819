"""Storing what arrived: one statement per event, deduplicated, counted on every delivery."""
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from infra.logs import log_ids, request_id
from payment import metrics
from payment.models import EventSource, EventState, PaymentEvent, RefusedRequest
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


# Alipay's returns and notifications are 20 to 40 short fields, about 2 KB in all.
MAX_PARAMS = 64
MAX_VALUE_LENGTH = 4096
MAX_PARAMS_SIZE = 16 * 1024
# What is kept of a refused request: a sample to recognise it by, not the request.
SAMPLE_PARAMS = 24
SAMPLE_VALUE_LENGTH = 128


@dataclass(frozen=True)
class StoredEvent:
    id: int
    state: str
    new: bool = True  # False: a repeat delivery of a stored event


def params_storable(params: dict[str, Any]) -> dict[str, str]:
    """What arrived, fit for a JSON column: valid UTF-8 text, no NUL, bounded size."""
    def text(value: Any) -> str:
        valid = str(value).encode("utf-8", "replace").decode("utf-8")  # lone surrogates
        return valid.replace("\x00", "\ufffd")[:MAX_VALUE_LENGTH]

    return {text(k)[:64]: text(v) for k, v in list(params.items())[:MAX_PARAMS]}


def _digest(params: dict[str, str]) -> str:
    canonical = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()


def dedupe_key(source: str, params: dict[str, str]) -> str:
    if source in (EventSource.QUERY, EventSource.BILL):
        return f"{source}:{params.get('trade_no', '')}:{params.get('trade_status', '')}"[:200]
    if source == EventSource.NOTIFY and params.get("notify_id"):
        notify_id = params["notify_id"]
        if len(notify_id) <= 128:
            return f"notify:{notify_id}"
        return f"notify:sha256:{hashlib.sha256(notify_id.encode()).hexdigest()}"
    return f"{source}:sha256:{_digest(params)}"


def _insert_sql() -> str:
    event = PaymentEvent._meta.db_table
    order = OrderInfo._meta.db_table
    # One statement whether new or repeated: no failed insert, no rollback, no second query.
    return (
        f"INSERT INTO {event} (source, dedupe_key, out_trade_no, trade_no, order_id, raw_data,"
        " remote_addr, request_id, state, reason, attempts, deliveries, last_error,"
        " next_attempt_at, received_at, updated_at)"
        f" VALUES (%s, %s, %s, %s, (SELECT order_id FROM {order} WHERE order_id = %s), %s,"
        " %s, %s, %s, %s, 0, 1, '', %s, %s, %s)"
        f" ON CONFLICT (dedupe_key) DO UPDATE SET deliveries = {event}.deliveries + 1"
        " RETURNING id, state, deliveries"
    )


def insert_statement(
    *,
    source: str,
    params: dict[str, Any],
    remote_addr: str | None = None,
    state: str = EventState.RECEIVED,
    reason: str = "",
) -> tuple[str, list[Any]]:
    """The one statement that stores an event (or counts a repeat delivery), with its values.

    The statement returns (id, state, deliveries). The event keeps the request id it came
    with (the web request's, or the task's).
    """
    params = params_storable(params)
    out_trade_no = params.get("out_trade_no", "")[:64]
    now = timezone.now()
    return _insert_sql(), [
        source, dedupe_key(source, params), out_trade_no, params.get("trade_no", "")[:64],
        out_trade_no, json.dumps(params, ensure_ascii=False),
        remote_addr, (request_id() or "")[:64], state, reason[:1000],
        now if state == EventState.RECEIVED else None, now, now,
    ]


def stored_event(row: tuple[Any, ...], source: str, out_trade_no: str,
           trade_no: str = "") -> StoredEvent:
    """The insert's returned row; a new event is logged (with the request id it came with,
    which the workers' lines about it carry too), every one counted."""
    event_id, state, deliveries = row
    new = deliveries == 1
    metrics.event_received(source=source, outcome="stored" if new else "duplicate")
    if new:
        logger.info("payment event stored id=%s source=%s out_trade_no=%s state=%s",
                    event_id, source, out_trade_no[:64], state,
                    extra=log_ids(order_id=out_trade_no[:64], trade_no=trade_no[:64],
                                  event_id=event_id, source=source))
    return StoredEvent(id=event_id, state=state, new=new)


def event_insert(
    *,
    source: str,
    params: dict[str, Any],
    remote_addr: str | None = None,
    state: str = EventState.RECEIVED,
    reason: str = "",
) -> StoredEvent:
    """Store what arrived, once; a repeat only counts another delivery (see insert_statement)."""
    sql, values = insert_statement(source=source, params=params, remote_addr=remote_addr,
                                   state=state, reason=reason)
    row = _execute(sql, values)
    return stored_event(row, source, str(params.get("out_trade_no", "")),
                  str(params.get("trade_no", "")))


def _execute(sql: str, values: list[Any]) -> tuple[Any, ...]:
    adapt = connection.ops.adapt_datetimefield_value
    values = [adapt(v) if isinstance(v, datetime) else v for v in values]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row: tuple[Any, ...] = cursor.fetchone()
    return row


def refused_sample(params: dict[str, Any]) -> dict[str, str]:
    """A bounded sample of a refused request: no signature, at most about 4 KB."""
    kept = [(k, v) for k, v in params.items() if k != "sign"][:SAMPLE_PARAMS]
    return params_storable({str(k)[:32]: str(v)[:SAMPLE_VALUE_LENGTH] for k, v in kept})


def _refusal_sql() -> str:
    table = RefusedRequest._meta.db_table
    return (
        f"INSERT INTO {table} (source, remote_addr, hour, count, reason, out_trade_no, sample,"
        " first_seen, last_seen) VALUES (%s, %s, %s, 1, %s, %s, %s, %s, %s)"
        " ON CONFLICT (source, remote_addr, hour) DO UPDATE"
        f" SET count = {table}.count + 1, last_seen = EXCLUDED.last_seen RETURNING count"
    )


def refusal_statement(*, source: str, params: dict[str, Any], remote_addr: str | None,
                      reason: str) -> tuple[str, list[Any]]:
    """The statement that counts a refused request (see RefusedRequest); returns (count,)."""
    now = timezone.now()
    kept = refused_sample(params)
    return _refusal_sql(), [
        source, (remote_addr or "")[:45], now.replace(minute=0, second=0, microsecond=0),
        reason[:200], kept.get("out_trade_no", "")[:64], json.dumps(kept, ensure_ascii=False),
        now, now,
    ]
