"""Intake: what the web does with a return redirect or a notification, and nothing more.

Shape check, Alipay's signature (microseconds with `cryptography`) before anything is stored
or deduplicated, a reload of an applied return answered from its `Payment` without a write,
a new event stored with one statement, and a wake-up for the workers published off the
request path. Verification against the order and Alipay happens on the workers.
"""
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.db import connection, transaction
from django.http import QueryDict

from infra.logs import log_ids
from payment import event_store, gateway, metrics, wakeups
from payment.errors import PaymentError, SignatureInvalid, Throttled
from payment.intake import throttle
from payment.models import EventSource, EventState, Payment, PaymentEvent
from payment.tasks import events_process_task

logger = logging.getLogger(__name__)


OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
BASE64 = re.compile(r"[A-Za-z0-9+/=]{16,1024}")


FORM = "application/x-www-form-urlencoded"
# Far above Alipay's largest return or notification (about 2 KB), far below what fills a disk.
MAX_BODY_SIZE = 64 * 1024


def params_parse(*, query: str | bytes, body: bytes, content_type: str) -> dict[str, Any]:
    """Query string and body (form or JSON object) merged; the body wins."""
    try:
        return _params_parse(query, body, content_type)
    except SuspiciousOperation:  # more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        raise PaymentError("Too many parameters.") from None


CHARSET_PARAM = re.compile(r"(?:^|&)charset=([^&]{0,20})")


def _codec(raw: str | bytes) -> str:
    """The codec of a form or query Alipay sent: its own `charset` parameter says (GBK when
    the request that started the trade was GBK), UTF-8 when there is none."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    match = CHARSET_PARAM.search(text)
    codec = gateway.charset_codec(match.group(1) if match else None)
    if codec is None:
        raise PaymentError("The charset is not one Alipay uses.")
    return codec


def _params_parse(query: str | bytes, body: bytes, content_type: str) -> dict[str, Any]:
    try:
        params: dict[str, Any] = dict(QueryDict(query, encoding=_codec(query)).lists())
    except (ValueError, UnicodeDecodeError):
        raise PaymentError("The query string cannot be read.") from None
    if not body:
        return params
    if content_type == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise PaymentError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise PaymentError("The request body must be a form or a JSON object.")
        params.update(data)
    elif content_type in (FORM, "") or content_type.startswith("text/"):
        try:
            params.update(QueryDict(body, encoding=_codec(body)).lists())
        except (ValueError, UnicodeDecodeError):
            raise PaymentError("The request body cannot be read.") from None
    else:
        raise PaymentError("The request body must be a form or a JSON object.")
    return params


def params_clean(raw: dict[str, Any]) -> dict[str, str]:
    """Alipay's parameters as a plain dict of str, or PaymentError when they are not."""
    if len(raw) > event_store.MAX_PARAMS:
        raise PaymentError("Too many parameters.")
    params: dict[str, str] = {}
    size = 0
    for key, value in raw.items():
        if isinstance(value, list):
            value = value[-1] if value else ""
        if not isinstance(key, str) or not isinstance(value, str):
            raise PaymentError("Parameters must be text.")
        if len(key) > 64 or len(value) > event_store.MAX_VALUE_LENGTH:
            raise PaymentError("A parameter is too long.")
        size += len(key) + len(value)
        if size > event_store.MAX_PARAMS_SIZE:
            raise PaymentError("The parameters are too large.")
        params[key] = value
    return params


def params_authenticate(params: dict[str, str]) -> None:
    """The shape every return or notification must have, and Alipay's signature over it."""
    if not params.get("sign") or not params.get("out_trade_no"):
        raise PaymentError(
            "These are not Alipay's parameters: sign and out_trade_no are required."
        )
    if not OUT_TRADE_NO.fullmatch(params["out_trade_no"]):
        raise PaymentError("out_trade_no must be 1 to 64 letters, digits or underscores.")
    if not BASE64.fullmatch(params["sign"]):
        raise PaymentError("sign is not a base64 signature.")
    if not gateway.signature_valid(params):
        raise SignatureInvalid("signature does not verify with Alipay's public key")


@dataclass(frozen=True)
class Answer:
    """What the return endpoint tells the browser: the seed's contract and its additions."""

    status: int
    body: dict[str, Any]
    retry_after: int = 0

    @property
    def is_final(self) -> bool:
        return self.status != 202


def _table(model: type[Payment] | type[PaymentEvent]) -> str:
    return model._meta.db_table


# The reads of the intake, as SQL shared by the Django view and the ASGI fast path.
PAYMENT_STATUS_SQL = f"SELECT status FROM {_table(Payment)} WHERE trade_id = %s AND order_id = %s"
EVENT_SQL = f"SELECT state, out_trade_no, trade_no FROM {_table(PaymentEvent)} WHERE id = %s"


def processing_answer(order_id: str) -> Answer:
    return Answer(202, {"status": "processing", "order_id": order_id})


def payment_answer(*, status: str | None, trade_no: str, order_id: str) -> Answer | None:
    """The answer for a trade that already paid (or was refused by) this order, or None."""
    if status is None:
        return None
    if status != Payment.Status.APPLIED:
        return Answer(409, {
            "message": "The order was closed before this payment arrived; the payment is "
                       "being refunded.",
            "order_id": order_id, "refund": status,
        })
    return Answer(200, {"trade_id": trade_no})


def event_answer(*, state: str, order_id: str, trade_no: str,
                 payment_status: str | None) -> Answer:
    """The answer for a stored return event, in whatever state it is."""
    if state == EventState.APPLIED:
        answer = payment_answer(status=payment_status, trade_no=trade_no, order_id=order_id)
        if answer is not None:
            return answer
    if state in (EventState.REJECTED, EventState.DEAD, EventState.RECORDED):
        return Answer(403, {"message": "The payment could not be verified with Alipay.",
                            "order_id": order_id})
    return processing_answer(order_id)


def _fetch(sql: str, values: list[Any]) -> tuple[Any, ...] | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row


def _payment_status(trade_no: str, order_id: str) -> str | None:
    row = _fetch(PAYMENT_STATUS_SQL, [trade_no, order_id])
    return None if row is None else str(row[0])


def stored_event_answer(*, event_id: int) -> Answer:
    """The answer for a stored return event, read now."""
    row = _fetch(EVENT_SQL, [event_id])
    assert row is not None
    state, order_id, trade_no = row
    status = _payment_status(trade_no, order_id) if state == EventState.APPLIED else None
    return event_answer(state=state, order_id=order_id, trade_no=trade_no,
                        payment_status=status)


def event_is_settled(*, event_id: int) -> bool:
    row = _fetch(EVENT_SQL, [event_id])
    return row is not None and row[0] != EventState.RECEIVED


@dataclass(frozen=True)
class ReturnReceipt:
    event_id: int | None
    answer: Answer


def return_receive(*, params: dict[str, str], remote_addr: str | None) -> ReturnReceipt:
    """A return redirect: answered from its payment on a reload, else stored and queued.

    Raises PaymentError for what is not Alipay's signed return (see `refusal`).
    """
    params_authenticate(params)
    order_id = params["out_trade_no"]
    answer = payment_answer(status=_payment_status(params.get("trade_no", ""), order_id),
                            trade_no=params.get("trade_no", ""), order_id=order_id)
    if answer is not None:
        metrics.event_received(source=EventSource.RETURN, outcome="duplicate")
        return ReturnReceipt(event_id=None, answer=answer)
    stored = event_record(source=EventSource.RETURN, params=params, remote_addr=remote_addr)
    if stored.state != EventState.RECEIVED:
        return ReturnReceipt(event_id=stored.id, answer=stored_event_answer(event_id=stored.id))
    return ReturnReceipt(event_id=stored.id, answer=processing_answer(order_id))


def notification_receive(*, params: dict[str, str], remote_addr: str | None) -> None:
    """Alipay's notification, stored once (a repeat counts a delivery); PaymentError if not
    Alipay's (see `refusal`)."""
    params_authenticate(params)
    metrics.notify_lag_observe(params.get("notify_time", ""))
    event_record(source=EventSource.NOTIFY, params=params, remote_addr=remote_addr)


def status_throttle(remote_addr: str | None) -> None:
    """Every return a client sends counts; Throttled past PAYMENT_STATUS_RATE."""
    if not throttle.STATUS.allow(remote_addr):
        raise throttled(throttle.STATUS, EventSource.RETURN, remote_addr)


def throttled(limit: throttle.Throttle, source: str, remote_addr: str | None) -> Throttled:
    """The error for a throttled client, logged once per client and window in each process."""
    metrics.event_received(source=source, outcome="throttled")
    if throttle.log_once(f"{limit.scope}:{remote_addr}"):
        logger.warning("%s throttled from %s (%s)", source, remote_addr, limit.scope)
    return Throttled(limit.retry_after())


def refusal(*, source: str, params: dict[str, Any], remote_addr: str | None,
            error: PaymentError) -> PaymentError:
    """A request that is not Alipay's: counted with a sample (RefusedRequest), never an event.

    Returns the error to answer with: `error`, or Throttled once the client has sent more
    than PAYMENT_REFUSED_RATE of them (those are not even counted in the database).
    """
    if isinstance(error, Throttled):
        return error
    if not throttle.REFUSED.allow(remote_addr):
        return throttled(throttle.REFUSED, source, remote_addr)
    metrics.event_received(source=source, outcome="refused")
    count = event_store.refusal_store(source=source, params=params, remote_addr=remote_addr,
                                 reason=str(error))
    refusal_note(source, params, remote_addr, error, count)
    return error


def refusal_note(source: str, params: dict[str, Any], remote_addr: str | None,
                 error: PaymentError, count: int) -> None:
    """Logged for a client's first refusal of the hour; the rest are counted."""
    if count == 1:
        order_id = str(params.get("out_trade_no", ""))[:64]
        logger.warning("%s refused from %s out_trade_no=%s: %s", source, remote_addr,
                       order_id, error, extra=log_ids(order_id=order_id, source=source))


def refused_answer(error: PaymentError) -> Answer:
    """What the return endpoint answers for a request it refused."""
    if isinstance(error, Throttled):
        return Answer(429, {"message": str(error)}, retry_after=error.retry_after)
    if isinstance(error, SignatureInvalid):
        return Answer(403, {"message": "The payment could not be verified with Alipay."})
    return Answer(400, {"message": str(error)})


def event_record(
    *, source: str, params: dict[str, Any], remote_addr: str | None = None
) -> event_store.StoredEvent:
    """Store an event and wake the workers when it waits for them."""
    stored = event_store.event_store(source=source, params=params, remote_addr=remote_addr)
    if stored.state == EventState.RECEIVED:
        transaction.on_commit(workers_wake)
    return stored


WAKE_INTERVAL = 0.002


class _Waker:
    """Publishes wake-ups from one background thread; a burst of events becomes few messages.

    A request only sets a flag. The row is already committed: a broker that is away (redis-py
    spends seconds on its own retries) must not hold up the answer to Alipay or the buyer,
    and a wake-up that never leaves is made up by the sweeper.
    """

    def __init__(self) -> None:
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._pending.set()
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="wake-workers",
                                                    daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                if wakeups.workers_wake_claim():
                    events_process_task.delay()
            except Exception as exc:  # noqa: BLE001  (the broker's errors vary by transport)
                logger.warning("could not wake the workers: %s", type(exc).__name__)
            # A wake-up makes a worker take everything due: in a burst, one per interval is
            # enough, and publishing one per request cost a quarter of the web's CPU.
            time.sleep(WAKE_INTERVAL)


_waker = _Waker()


def workers_wake() -> None:
    _waker.wake()
