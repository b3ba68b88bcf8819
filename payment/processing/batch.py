"""Processing stored events in batches: claim -> verify -> confirm -> apply.

A queue message is a wake-up, not a unit of work: `events_process` claims up to a batch of
due events (`FOR UPDATE SKIP LOCKED`, so concurrent workers never share one), verifies them,
confirms returns with Alipay on a shared pool of gateway threads, and applies the lot in one
transaction. The claim itself is committed first (attempts + 1, leased until
`claim_lease`), so a worker killed mid-batch leaves its events due again once the lease
ends, and an event that keeps failing is counted towards giving up. Safe to run any number
of times, concurrently too.
"""
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from infra.bulk_sql import marks, rows_select, rows_update, rows_updated
from infra.logs import log_ids, request_origins
from payment import metrics, wakeups
from payment.errors import EventRejected, PaymentNotConfirmed
from payment.models import EventSource, EventState, Payment, PaymentEvent
from payment.processing.applying import payments_apply
from payment.processing.retry import RetryPolicy, retry_policy
from payment.processing.verification import (
    Verified,
    event_verify,
    paid_by_notifications,
    returns_confirm,
)
from payment.refunds.notifications import RefundNotice, refund_notice, refund_notices_apply
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


@dataclass
class Claimed:
    id: int
    source: str
    params: dict[str, str]
    attempts: int  # including this one
    received_at: datetime | None = None
    request_id: str = ""  # of the request (or task) it arrived with

    def log_ids(self, **more: object) -> dict[str, object]:
        return log_ids(order_id=self.params.get("out_trade_no", "")[:64],
                       trade_no=self.params.get("trade_no", "")[:64], event_id=self.id, **more)


@dataclass
class BatchResult:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    refunds: list[int] = field(default_factory=list)  # refunds for the workers to take on
    retry_at: datetime | None = None  # the earliest deferred event's next attempt

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


@dataclass
class _Finish:
    state: str
    reason: str = ""
    order_id: str | None = None
    trade_no: str = ""
    payment_status: str = ""  # of the payment an applied event made, when it made one


def events_claim(
    *, limit: int, policy: RetryPolicy, event_ids: list[int] | None = None
) -> tuple[list[Claimed], list[int]]:
    """Claim due events for this worker; returns them and the ids just given up on (dead)."""
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            claimed, given_up = _claim_postgresql(now=now, limit=limit, policy=policy,
                                                  event_ids=event_ids)
        else:
            claimed, given_up = _claim_orm(now=now, limit=limit, policy=policy,
                                           event_ids=event_ids)
        for event in given_up:
            logger.warning("payment event id=%s given up (dead) after %s attempts",
                           event.id, policy.max_attempts,
                           extra=event.log_ids(request_id=event.request_id or None))
        if given_up:
            transaction.on_commit(lambda: _dead_count(given_up))
    return claimed, [event.id for event in given_up]


def _dead_reason(policy: RetryPolicy) -> str:
    return f"gave up after {policy.max_attempts} attempts"


_EVENTS = PaymentEvent._meta.db_table
# One statement: lock the due events in the order of the index of waiting events, skip the
# ones another worker holds, and lease them (or give them up, past the attempts allowed).
# In SET, `e.attempts` is the value before; RETURNING gives the values after.
_CLAIM_SQL = f"""
UPDATE {_EVENTS} e SET
    attempts = CASE WHEN e.attempts >= %(max)s THEN e.attempts ELSE e.attempts + 1 END,
    next_attempt_at = CASE WHEN e.attempts >= %(max)s THEN e.next_attempt_at
                           ELSE %(lease)s END,
    state = CASE WHEN e.attempts >= %(max)s THEN %(dead)s ELSE e.state END,
    processed_at = CASE WHEN e.attempts >= %(max)s THEN %(now)s ELSE e.processed_at END,
    reason = CASE WHEN e.attempts >= %(max)s THEN %(reason)s ELSE e.reason END,
    updated_at = %(now)s
WHERE e.id IN (
    SELECT id FROM {_EVENTS}
    WHERE state = %(received)s AND next_attempt_at <= %(now)s {{only}}
    ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING e.id, e.source, e.raw_data, e.attempts, e.received_at, e.request_id, e.state
"""


def _claim_postgresql(*, now: datetime, limit: int, policy: RetryPolicy,
                      event_ids: list[int] | None) -> tuple[list[Claimed], list[Claimed]]:
    """The claim in one statement (the ORM's took two, and a third of the claim's CPU went to
    building them); in the caller's transaction."""
    with connection.cursor() as cursor:
        # The ordered scan of the index of waiting events stops after `limit` rows and
        # marks the entries of settled events dead as it passes them; a bitmap scan
        # (the planner's pick for what it thinks is a short list) visits all of them
        # on every claim until vacuum runs.
        # A claim lost with the database's last moments is only made again: it need not
        # wait for its commit to reach the disk.
        cursor.execute("SET LOCAL enable_bitmapscan = off; "
                       "SET LOCAL synchronous_commit = off")
        cursor.execute(
            _CLAIM_SQL.format(only="AND id = ANY(%(ids)s)" if event_ids is not None else ""),
            {"max": policy.max_attempts, "lease": policy.lease_until(now), "now": now,
             "dead": EventState.DEAD.value, "received": EventState.RECEIVED.value,
             "reason": _dead_reason(policy), "limit": limit, "ids": event_ids or []})
        rows = sorted(cursor.fetchall())
    claimed: list[Claimed] = []
    given_up: list[Claimed] = []
    for row in rows:
        dead = row[6] == EventState.DEAD
        # A claimed event's attempts include this one; a dead one's are those it had.
        # Django reads jsonb as text (its JSONField decodes it): so does this cursor.
        raw = json.loads(row[2]) if isinstance(row[2], str) else row[2]
        event = Claimed(id=row[0], source=row[1], params=dict(raw),
                        attempts=row[3] + (1 if dead else 0), received_at=row[4],
                        request_id=row[5])
        (given_up if dead else claimed).append(event)
    return claimed, given_up


def _claim_orm(*, now: datetime, limit: int, policy: RetryPolicy,
               event_ids: list[int] | None) -> tuple[list[Claimed], list[Claimed]]:
    """The claim on other databases (SQLite under `make run`: one writer at a time)."""
    due = PaymentEvent.objects.filter(state=EventState.RECEIVED, next_attempt_at__lte=now)
    if event_ids is not None:
        due = due.filter(pk__in=event_ids)
    rows = [
        Claimed(id=row[0], source=row[1], params=dict(row[2]), attempts=row[3] + 1,
                received_at=row[4], request_id=row[5])
        for row in due.select_for_update(skip_locked=True).order_by("next_attempt_at", "id")
        .values_list("id", "source", "raw_data", "attempts", "received_at",
                     "request_id")[:limit]
    ]
    given_up = [event for event in rows if policy.exhausted(event.attempts - 1)]
    claimed = [event for event in rows if not policy.exhausted(event.attempts - 1)]
    if given_up:
        PaymentEvent.objects.filter(pk__in=[event.id for event in given_up]).update(
            state=EventState.DEAD, processed_at=now, updated_at=now,
            reason=_dead_reason(policy),
        )
    if claimed:
        PaymentEvent.objects.filter(pk__in=[c.id for c in claimed]).update(
            attempts=F("attempts") + 1, next_attempt_at=policy.lease_until(now),
            updated_at=now,
        )
    return claimed, given_up


def _dead_count(given_up: list[Claimed]) -> None:
    for event in given_up:
        metrics.events_processed(source=event.source, outcome=str(EventState.DEAD))


def events_process(*, limit: int, event_ids: list[int] | None = None) -> BatchResult:
    """Claim, verify and apply one batch of due events (or of the given ids, if due)."""
    policy = retry_policy()
    claimed, dead = events_claim(limit=limit, policy=policy, event_ids=event_ids)
    result = BatchResult(claimed=len(claimed))
    if dead:
        result.count(str(EventState.DEAD), len(dead))
        wakeups.events_settled(outcomes={event_id: wakeups.outcome_text(EventState.DEAD)
                                         for event_id in dead})
    if not claimed:
        return result

    # Lines about an event carry the request id it arrived with, whatever task settles it.
    with request_origins(field="event_id",
                         origins={c.id: c.request_id for c in claimed if c.request_id}):
        return _batch_process(claimed, result, policy)


def _batch_process(claimed: list[Claimed], result: BatchResult,
                   policy: RetryPolicy) -> BatchResult:
    finishes: dict[int, _Finish] = {}
    deferred: dict[int, str] = {}
    notices: list[RefundNotice] = []
    amounts, links_started = _orders_read(claimed)
    to_apply = _verify(claimed, amounts, finishes, deferred, notices, policy)
    # Refund notifications change the ledger only; their events settle with the batch below.
    noticed = refund_notices_apply(notices=notices)
    for notice in notices:
        finishes[notice.event_id] = _Finish(EventState.RECORDED, noticed.reasons[notice.event_id],
                                            notice.order_id, notice.trade_no)
    with transaction.atomic():
        applied = payments_apply(items=to_apply)
        for item in to_apply:
            if item.event_id in applied.rejected:
                finishes[item.event_id] = _Finish(EventState.REJECTED,
                                                  applied.rejected[item.event_id])
            else:
                finishes[item.event_id] = _Finish(EventState.APPLIED,
                                                  applied.reasons[item.event_id],
                                                  item.order_id, item.trade_no,
                                                  applied.statuses.get(item.event_id, ""))
        by_id = {event.id: event for event in claimed}
        finished = _events_finish(finishes, by_id)
        result.retry_at = _events_defer(deferred, claimed, policy)
    result.refunds = applied.refunds + noticed.wake
    for finish in finishes.values():
        result.count(str(finish.state))
    if deferred:
        result.count("deferred", len(deferred))
    # Waiters are handed the outcome of the events this batch settled; of one another
    # worker settled meanwhile (a lease that ran out), only a wake-up: they read the row.
    wakeups.events_settled(outcomes={
        event_id: wakeups.outcome_text(finish.state, finish.payment_status)
        if event_id in finished else wakeups.UNKNOWN for event_id, finish in finishes.items()})
    _batch_observe(by_id, finishes, deferred, links_started)
    logger.info("payment batch claimed=%s outcomes=%s", len(claimed), result.outcomes)
    return result


def _batch_observe(claimed: dict[int, Claimed], finishes: dict[int, _Finish],
                   deferred: dict[int, str], links_started: dict[str, datetime]) -> None:
    """Metrics of a committed batch: outcomes by source, and how long payments took."""
    now = timezone.now()
    for event_id, finish in finishes.items():
        metrics.events_processed(source=claimed[event_id].source, outcome=str(finish.state))
    for event_id in deferred:
        metrics.events_processed(source=claimed[event_id].source, outcome="deferred")
    applied = {event_id: finish for event_id, finish in finishes.items()
               if finish.state == EventState.APPLIED}
    for event_id in applied:
        received_at = claimed[event_id].received_at
        if received_at is not None:
            metrics.event_applied_observe(source=claimed[event_id].source,
                                          received_at=received_at, applied_at=now)
    # A payment that paid its order now (not a repeat, not one to refund).
    paid = {f.order_id for f in applied.values() if not f.reason and f.order_id}
    for order_id in paid:
        if order_id in links_started:
            metrics.paid_observe(link_started_at=links_started[order_id], applied_at=now)


def _orders_read(claimed: list[Claimed]) -> tuple[dict[str, Decimal], dict[str, datetime]]:
    """The claimed events' orders, in one query: each one's amount, and when its first pay
    link was issued (for the time-to-paid metric, of those that have one)."""
    amounts: dict[str, Decimal] = {}
    links_started: dict[str, datetime] = {}
    for order_id, amount, started_at in OrderInfo.objects.filter(
            order_id__in={c.params.get("out_trade_no", "") for c in claimed}).values_list(
            "order_id", "total_amount", "payment_attempt__started_at"):
        amounts[order_id] = amount
        if started_at is not None:
            links_started[order_id] = started_at
    return amounts, links_started


def _verify(
    claimed: list[Claimed], amounts: dict[str, Decimal], finishes: dict[int, _Finish],
    deferred: dict[int, str], notices: list[RefundNotice], policy: RetryPolicy,
) -> list[Verified]:
    """Check every claimed event against its order's amount (`amounts`); fills
    `finishes`/`deferred` and `notices` (notifications about refunds), returns the paid ones
    to apply."""
    verified: list[tuple[Verified, Claimed]] = []
    for event in claimed:
        try:
            verified.append((event_verify(event_id=event.id, source=event.source,
                                          params=event.params, order_amounts=amounts), event))
        except EventRejected as exc:
            finishes[event.id] = _Finish(EventState.REJECTED, str(exc))
        except PaymentNotConfirmed as exc:
            deferred[event.id] = f"{type(exc).__name__}: {exc}"
    to_apply: list[Verified] = []
    returns: list[tuple[Verified, Claimed]] = []
    for item, event in verified:
        notice = refund_notice(event_id=item.event_id, order_id=item.order_id,
                               trade_no=item.trade_no, params=event.params) if (
            item.source == EventSource.NOTIFY) else None
        if notice is not None:
            notices.append(notice)
        elif item.source == EventSource.RETURN:
            returns.append((item, event))
        elif item.is_paid:
            to_apply.append(item)
        else:
            finishes[item.event_id] = _Finish(
                EventState.RECORDED, f"trade_status {item.trade_status[:32]}", item.order_id,
                item.trade_no)
    if returns:
        proven = _trades_proven_paid([r for r, _ in returns], to_apply, amounts)
        unproven = [(r, e.attempts) for r, e in returns if r.trade_no not in proven]
        errors = returns_confirm(returns=unproven, confirm_attempts=policy.confirm_attempts)
        for item, _event in returns:
            error = errors.get(item.event_id)
            if error is None:
                to_apply.append(item)
            elif isinstance(error, EventRejected):
                finishes[item.event_id] = _Finish(EventState.REJECTED, str(error))
            else:
                deferred[item.event_id] = f"{type(error).__name__}: {error}"
    return to_apply


_PAYMENTS = Payment._meta.db_table
# Payments of the trades, and their notifications (looked up by trade_no alone, its index,
# and filtered in Python: a condition on `state` can lead the planner to that far larger
# index). One statement, written once: Django built the two it replaces for longer than
# PostgreSQL ran them.
_PROOFS_SQL = (f"SELECT trade_id, order_id, NULL, NULL FROM {_PAYMENTS} WHERE trade_id IN ({{}})"
               f" UNION ALL SELECT trade_no, NULL, raw_data, state FROM {_EVENTS}"
               f" WHERE source = %s AND trade_no IN ({{}})")


def _trades_proven_paid(
    returns: list[Verified], paid_in_batch: list[Verified], amounts: dict[str, Decimal]
) -> set[str]:
    """Returned trades that need no trade query: already a payment of the same order, or a
    verified TRADE_SUCCESS notification for the same trade (in this batch or stored)."""
    returned_trades = {r.trade_no for r in returns}
    trade_nos = sorted(returned_trades)
    returned = {(r.trade_no, r.order_id) for r in returns}
    proven = {p.trade_no for p in paid_in_batch if p.trade_no in returned_trades}
    rows = rows_select(_PROOFS_SQL.format(marks(trade_nos), marks(trade_nos)),
                       [*trade_nos, EventSource.NOTIFY, *trade_nos])
    proven |= {trade_no for trade_no, order_id, raw, _ in rows
               if raw is None and (trade_no, order_id) in returned}
    proven |= paid_by_notifications(
        stored=(json.loads(raw) if isinstance(raw, str) else raw
                for trade_no, _, raw, state in rows
                if raw is not None and trade_no not in proven
                and state in (EventState.RECEIVED, EventState.APPLIED)),
        order_amounts=amounts,
    )
    return proven


def _events_finish(finishes: dict[int, _Finish], claimed: dict[int, Claimed]) -> set[int]:
    """Move events out of `received`, once: ones another worker finished are left alone.
    Returns the ids this call moved."""
    now = timezone.now()
    finished: set[int] = rows_updated(
        model=PaymentEvent,
        columns=["state", "reason", "order", "trade_no", "processed_at", "updated_at",
                 "next_attempt_at"],
        rows=[(event_id, f.state, f.reason[:1000], f.order_id, f.trade_no[:64], now, now, None)
              for event_id, f in sorted(finishes.items())],
        # A rejected event keeps the order and trade it was stored with.
        expressions={"order_id": "COALESCE({new}, {table}.order_id)",
                     "trade_no": "CASE WHEN {new} = '' THEN {table}.trade_no ELSE {new} END"},
        where=f"{PaymentEvent._meta.db_table}.state = 'received'",
    )
    for event_id, finish in finishes.items():
        # An applied event is logged once, by its payment; the others say why here.
        if finish.state != EventState.APPLIED or finish.reason:
            event = claimed[event_id]
            logger.info("payment event id=%s -> %s %s", event_id, finish.state, finish.reason,
                        extra=log_ids(
                            order_id=finish.order_id or event.params.get("out_trade_no", "")[:64],
                            trade_no=finish.trade_no or event.params.get("trade_no", "")[:64],
                            event_id=event_id, source=event.source, state=str(finish.state)))
    return finished


def _events_defer(
    deferred: dict[int, str], claimed: list[Claimed], policy: RetryPolicy
) -> datetime | None:
    """Schedule the next attempt of events that could not finish yet; the earliest one."""
    if not deferred:
        return None
    now = timezone.now()
    rows = [(event.id, policy.next_attempt_at(event.attempts, now), deferred[event.id][:1000], now)
            for event in claimed if event.id in deferred]
    rows_update(model=PaymentEvent, columns=["next_attempt_at", "last_error", "updated_at"],
                rows=rows)
    for event in claimed:
        if event.id in deferred:
            logger.warning("payment event id=%s deferred (attempt %s): %s",
                           event.id, event.attempts, deferred[event.id][:200],
                           extra=event.log_ids(source=event.source))
    return min(row[1] for row in rows)
