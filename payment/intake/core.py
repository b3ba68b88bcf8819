"""The intake's decisions, written once for every database and every HTTP entry.

What the web does with a return redirect or a notification, and nothing more: admit it (or
refuse it when the process is busy, payment/intake/admission.py), throttle, parse,
check the shape and Alipay's signature (microseconds with `cryptography`) before anything is
stored or deduplicated, answer a reload of an applied return from its `Payment` without a
write, store a new event with one statement, wake the workers off the request path, and (for
a return) wait for the workers' outcome without holding a thread. What is not Alipay's is
counted apart (RefusedRequest), never an event. Verification against the order and Alipay
happens on the workers.

Every read and write goes through an `IntakeStore` (payment/intake/store.py); the HTTP side is
payment/intake/asgi.py.
"""
import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from infra.logs import log_ids
from payment import event_store, gateway, metrics, wakeups
from payment.errors import PaymentError, SignatureInvalid, Throttled
from payment.intake import admission, throttle
from payment.intake.params import params_authenticate, params_clean, params_parse
from payment.intake.store import IntakeStore, StoreUnavailable
from payment.models import EventSource, EventState, Payment, PaymentEvent
from payment.tasks import events_process_task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What an intake endpoint answers: JSON for the return, `success`/`fail` for Alipay."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    retry_after: int = 0


SUCCESS = Answer(200, text="success")

# The reads of the intake, in SQL every store runs as it is.
PAYMENT_STATUS_SQL = (f"SELECT status FROM {Payment._meta.db_table}"
                      " WHERE trade_id = %s AND order_id = %s")
EVENT_SQL = (f"SELECT state, out_trade_no, trade_no FROM {PaymentEvent._meta.db_table}"
             " WHERE id = %s")

UNAVAILABLE_MESSAGE = "Payments cannot be checked right now; reload this page in a moment."
TOO_LARGE_MESSAGE = "The request body is too large."


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


def refused_answer(error: PaymentError) -> Answer:
    """What the return endpoint answers for a request it refused."""
    if isinstance(error, Throttled):
        return Answer(429, {"message": str(error)}, retry_after=error.retry_after)
    if isinstance(error, SignatureInvalid):
        return Answer(403, {"message": "The payment could not be verified with Alipay."})
    return Answer(400, {"message": str(error)})


def notification_refused_answer(error: PaymentError) -> Answer:
    return Answer(429 if isinstance(error, Throttled) else 400, text="fail")


# -- the two endpoints ------------------------------------------------------------------------

async def return_receive(store: IntakeStore, *, query: bytes | str, body: bytes,
                         content_type: str, remote_addr: str | None) -> Answer:
    """PUT /payment/status/: Alipay's return parameters, as the pay_success page hands them
    over. 200 once applied (a reload too), 202 when not settled within RETURN_WAIT_SECONDS,
    403 rejected, 409 paid after the order was closed, 400/429 refused, 503 database away or
    the process busy (with Retry-After; the page then follows the order)."""
    try:
        async with admission.working(EventSource.RETURN):
            return await _return_receive(store, query=query, body=body,
                                         content_type=content_type, remote_addr=remote_addr)
    except admission.Busy as exc:
        return Answer(503, {"message": str(exc)}, retry_after=exc.retry_after)


async def _return_receive(store: IntakeStore, *, query: bytes | str, body: bytes,
                          content_type: str, remote_addr: str | None) -> Answer:
    params: dict[str, str] = {}
    try:
        try:
            if not await throttle.STATUS.aallow(remote_addr):
                raise throttled_error(throttle.STATUS, EventSource.RETURN, remote_addr)
            params = params_clean(params_parse(query=query, body=body,
                                               content_type=content_type))
            return await _return_accept(store, params, remote_addr)
        except PaymentError as exc:
            return refused_answer(
                await request_refuse(store, EventSource.RETURN, params, remote_addr, exc))
    except StoreUnavailable as exc:
        _not_stored(EventSource.RETURN, params, exc)
        return Answer(503, {"message": UNAVAILABLE_MESSAGE})


async def notification_receive(store: IntakeStore, *, body: bytes, content_type: str,
                               remote_addr: str | None) -> Answer:
    """POST /payment/alipay/notify/: `success` once the notification is durably stored (or
    was already); `fail` otherwise, and Alipay delivers it again: 503 `fail` (with
    Retry-After) when the process is busy, before anything is parsed."""
    try:
        async with admission.working(EventSource.NOTIFY):
            return await _notification_receive(store, body=body, content_type=content_type,
                                                remote_addr=remote_addr)
    except admission.Busy as exc:
        return Answer(503, text="fail", retry_after=exc.retry_after)


async def _notification_receive(store: IntakeStore, *, body: bytes, content_type: str,
                                remote_addr: str | None) -> Answer:
    params: dict[str, str] = {}
    try:
        try:
            if content_type not in ("application/x-www-form-urlencoded", ""):
                raise PaymentError("A notification is a form.")
            # Parsed here, not by a framework: a GBK notification is decoded as GBK.
            params = params_clean(params_parse(query=b"", body=body, content_type=content_type))
            await _notification_accept(store, params, remote_addr)
        except PaymentError as exc:
            return notification_refused_answer(
                await request_refuse(store, EventSource.NOTIFY, params, remote_addr, exc))
    except StoreUnavailable as exc:
        _not_stored(EventSource.NOTIFY, params, exc)
        return Answer(503, text="fail")
    return SUCCESS


def too_large_answer(source: str) -> Answer:
    """A body above the limit, refused before it is read."""
    metrics.event_received(source=source, outcome="refused")
    if source == EventSource.NOTIFY:
        return Answer(413, text="fail")
    return Answer(413, {"message": TOO_LARGE_MESSAGE})


def incomplete_answer(source: str) -> Answer:
    """A body shorter than its Content-Length: the client gave up; nothing is stored."""
    metrics.event_received(source=source, outcome="refused")
    if source == EventSource.NOTIFY:
        return Answer(400, text="fail")
    return Answer(400, {"message": "The request body is shorter than its Content-Length."})


# -- the steps --------------------------------------------------------------------------------

async def _authenticate(params: dict[str, str]) -> None:
    """Alipay's signature, checked again once if the keys change meanwhile: a renewed
    certificate (certificate mode) or a rewritten key file (key mode) is learned on a
    thread, at most every ALIPAY_KEYS_REFRESH_SECONDS, and junk costs no more."""
    generation = gateway.alipay_keys_generation()
    try:
        params_authenticate(params)
    except SignatureInvalid:
        if not await asyncio.to_thread(gateway.alipay_keys_refresh, generation):
            raise
        params_authenticate(params)


async def _return_accept(store: IntakeStore, params: dict[str, str],
                         remote_addr: str | None) -> Answer:
    await _authenticate(params)
    order_id, trade_no = params["out_trade_no"], params.get("trade_no", "")
    answer = payment_answer(status=await _payment_status(store, trade_no, order_id),
                            trade_no=trade_no, order_id=order_id)
    if answer is not None:
        metrics.event_received(source=EventSource.RETURN, outcome="duplicate")
        return answer
    places = admission.admission()
    places.wait_admit(EventSource.RETURN)
    stored = await _event_insert(store, EventSource.RETURN, params, remote_addr)
    if stored.state != EventState.RECEIVED:
        return await _event_answer(store, stored.id)
    workers_wake()
    with places.paused():  # waiting for the workers is not work
        outcome = await wakeups.event_settled_wait(
            event_id=stored.id, timeout=settings.RETURN_WAIT_SECONDS,
            is_settled=lambda: _event_is_settled(store, stored.id))
    answer = handed_answer(outcome, order_id=order_id, trade_no=trade_no)
    return answer if answer is not None else await _event_answer(store, stored.id)


def handed_answer(outcome: tuple[str, str] | None, *, order_id: str,
                  trade_no: str) -> Answer | None:
    """The answer from the outcome a worker handed over with its wake-up, or None when it
    does not say enough (an applied event whose payment's status the worker did not know)."""
    if outcome is None:
        return None
    state, payment_status = outcome
    if state not in EventState.values or state == EventState.RECEIVED or (
            state == EventState.APPLIED and not payment_status):
        return None
    return event_answer(state=state, order_id=order_id, trade_no=trade_no,
                        payment_status=payment_status or None)


async def _notification_accept(store: IntakeStore, params: dict[str, str],
                               remote_addr: str | None) -> None:
    await _authenticate(params)
    metrics.notify_lag_observe(params.get("notify_time", ""))
    stored = await _event_insert(store, EventSource.NOTIFY, params, remote_addr)
    if stored.state == EventState.RECEIVED:
        workers_wake()


async def _event_insert(store: IntakeStore, source: str, params: dict[str, str],
                        remote_addr: str | None) -> event_store.StoredEvent:
    sql, values = event_store.insert_statement(source=source, params=params,
                                               remote_addr=remote_addr)
    row = await store.fetch_one(sql, values)
    assert row is not None  # INSERT ... RETURNING always returns the row
    return event_store.stored_event(row, source, params.get("out_trade_no", ""),
                              params.get("trade_no", ""))


async def _payment_status(store: IntakeStore, trade_no: str, order_id: str) -> str | None:
    row = await store.fetch_one(PAYMENT_STATUS_SQL, [trade_no, order_id])
    return None if row is None else str(row[0])


async def _event_answer(store: IntakeStore, event_id: int) -> Answer:
    row = await store.fetch_one(EVENT_SQL, [event_id])
    assert row is not None  # events are deleted by retention only once settled for months
    state, order_id, trade_no = row
    status = (await _payment_status(store, trade_no, order_id)
              if state == EventState.APPLIED else None)
    return event_answer(state=state, order_id=order_id, trade_no=trade_no,
                        payment_status=status)


async def _event_is_settled(store: IntakeStore, event_id: int) -> bool:
    row = await store.fetch_one(EVENT_SQL, [event_id])
    return row is not None and row[0] != EventState.RECEIVED


async def request_refuse(store: IntakeStore, source: str, params: dict[str, Any],
                         remote_addr: str | None, error: PaymentError) -> PaymentError:
    """A request that is not Alipay's: counted with a sample (RefusedRequest), never an event.

    Returns the error to answer with: `error`, or Throttled once the client has sent more
    than PAYMENT_REFUSED_RATE of them (those are not even counted in the database).
    """
    if isinstance(error, Throttled):
        return error
    if not await throttle.REFUSED.aallow(remote_addr):
        return throttled_error(throttle.REFUSED, source, remote_addr)
    metrics.event_received(source=source, outcome="refused")
    sql, values = event_store.refusal_statement(source=source, params=params,
                                                remote_addr=remote_addr, reason=str(error))
    row = await store.fetch_one(sql, values)
    assert row is not None  # INSERT ... RETURNING always returns the row
    if int(row[0]) == 1:  # a client's first refusal of the hour is logged, the rest counted
        order_id = str(params.get("out_trade_no", ""))[:64]
        logger.warning("%s refused from %s out_trade_no=%r: %s", source, remote_addr,
                       order_id, error, extra=log_ids(order_id=order_id, source=source))
    return error


def throttled_error(limit: throttle.Throttle, source: str,
                    remote_addr: str | None) -> Throttled:
    """The error for a throttled client, logged once per client and window in each process."""
    metrics.event_received(source=source, outcome="throttled")
    if throttle.log_once(f"{limit.scope}:{remote_addr}"):
        logger.warning("%s throttled from %s (%s)", source, remote_addr, limit.scope)
    return Throttled(limit.retry_after())


def _not_stored(source: str, params: dict[str, str], exc: StoreUnavailable) -> None:
    metrics.event_received(source=source, outcome="error")
    logger.error("%s not stored out_trade_no=%r error=%s", source,
                 params.get("out_trade_no"), exc,
                 extra=log_ids(order_id=params.get("out_trade_no"),
                               trade_no=params.get("trade_no")))


# -- waking the workers -----------------------------------------------------------------------

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
