"""Celery tasks: thin wrappers that take ids, call one service and queue what it asks for.

Every task is idempotent (late acks are safe). A payments message is a wake-up: the task
claims whatever is due, so lost or repeated messages change nothing.

Every task's name is pinned (`name=`) to the one Celery gave it from its module and function:
queued messages, the routes and the beat schedule (workers/celery.py, config/settings.py) name
tasks, and moving or renaming a function must not strand them.
"""
import logging
from datetime import date, datetime, timedelta
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnavailable

from payment import gateway, wakeups
from payment.gateway import GatewayUnavailable
from payment.processing import sweeper
from payment.processing.batch import events_process
from payment.processing.retry import retry_policy
from payment.reconciliation import bills, claims, expiry, retention, trades
from payment.refunds import ledger

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
MAX_BATCHES_PER_RUN = 100


class LoggedGiveUp(Task):  # type: ignore[misc]
    """Where a task gives up: what it worked on is still in the database, so a warning."""

    # Expected in operation (gateway, database or broker away): Celery logs them without the
    # ERROR line and traceback it gives a bug; on_failure says what happens next. A task
    # whose broker is away (restarting) cannot queue what comes next (a wake-up, a batch, a
    # refund step): its own work is committed, and the sweeper or the next run queues it.
    throws = (GatewayUnavailable, *DATABASE_ERRORS, BrokerUnavailable)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        logger.warning("task %s gave up (%s: %s); the sweeper or the next run takes it up",
                       self.name, type(exc).__name__, exc)


# The policy is read when the worker loads its tasks, after settings are configured.
_RETRY = retry_policy().task_options()


@shared_task(name="payment.tasks.events_process_task",
             base=LoggedGiveUp, autoretry_for=DATABASE_ERRORS, **_RETRY)
def events_process_task(event_ids: list[int] | None = None) -> dict[str, int]:
    """Claim and settle one batch of due payment events."""
    wakeups.workers_wake_taken()
    batch = events_process(limit=settings.PAYMENT_BATCH_SIZE, event_ids=event_ids)
    if batch.claimed >= settings.PAYMENT_BATCH_SIZE:
        events_process_task.delay()  # more are waiting: keep draining
    if batch.retry_at is not None:
        countdown = max(0.0, (batch.retry_at - timezone.now()).total_seconds())
        events_process_task.apply_async(countdown=countdown)
    _refunds_send(batch.refunds)
    return batch.outcomes


@shared_task(name="payment.tasks.refund_process_task",
             base=LoggedGiveUp, autoretry_for=DATABASE_ERRORS, **_RETRY)
def refund_process_task(refund_id: int) -> str:
    """One step of a refund (send or confirm); it queues its own next step."""
    step = ledger.refund_process(refund_id=refund_id)
    if step.next_in is not None:
        refund_process_task.apply_async((refund_id,), countdown=step.next_in)
    return step.state


@shared_task(name="payment.tasks.payment_refund_task",
             base=LoggedGiveUp, autoretry_for=DATABASE_ERRORS, **_RETRY)
def payment_refund_task(payment_id: int) -> str:
    """A late payment's refund, as queued before the ledger: now its ledger row's first step."""
    refund_id = ledger.late_payment_refund_ensure(payment_id=payment_id)
    if refund_id is None:
        return "settled"
    return refund_process_task(refund_id)


@shared_task(name="payment.tasks.records_prune_task", base=LoggedGiveUp)
def records_prune_task() -> dict[str, int]:
    """Retention: delete settled events and refused-request counts past their time."""
    pruned = retention.records_prune()
    return {"events": pruned.events, "refused": pruned.refused}


@shared_task(name="payment.tasks.events_sweep_task", base=LoggedGiveUp)
def events_sweep_task() -> dict[str, int]:
    swept = sweeper.events_sweep()
    if swept.due:
        events_process_task.delay()
    _refunds_send(swept.refunds)
    return {"due": swept.due, "dead": swept.dead, "refunds": len(swept.refunds)}


@shared_task(name="payment.tasks.reconcile_dispatch_task", base=LoggedGiveUp)
def reconcile_dispatch_task() -> int:
    """Claim every due check in batches and spread the batches over the workers."""
    claimed = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        order_ids, token = claims.reconciliation_checks_claim_with_token(
            limit=settings.RECONCILE_BATCH_SIZE
        )
        if not order_ids:
            break
        reconcile_batch_task.delay(order_ids, token.isoformat())
        claimed += len(order_ids)
    return claimed


@shared_task(name="payment.tasks.reconcile_batch_task", base=LoggedGiveUp)
def reconcile_batch_task(order_ids: list[str], token: str) -> dict[str, int]:
    held = claims.reconciliation_checks_hold(
        order_ids=order_ids, token=datetime.fromisoformat(token)
    )
    result = trades.orders_reconcile(order_ids=held)
    _refunds_send(result.refunds)
    return result.counts


@shared_task(name="payment.tasks.orders_expire_dispatch_task", base=LoggedGiveUp)
def orders_expire_dispatch_task() -> int:
    order_ids = expiry.orders_expired(limit=settings.RECONCILE_BATCH_SIZE)
    for order_id in order_ids:
        order_expire_task.delay(order_id)
    return len(order_ids)


@shared_task(name="payment.tasks.order_expire_task",
             base=LoggedGiveUp, autoretry_for=(GatewayUnavailable, *DATABASE_ERRORS), **_RETRY)
def order_expire_task(order_id: str) -> dict[str, str]:
    result = expiry.order_expire(order_id=order_id)
    _refunds_send(result.refunds)
    return result.counts_by_order


@shared_task(name="payment.tasks.bill_reconcile_task",
             base=LoggedGiveUp, autoretry_for=(GatewayUnavailable, *DATABASE_ERRORS), **_RETRY)
def bill_reconcile_task(bill_date: str) -> dict[str, object]:
    """Reconcile one day against Alipay's trade bill (idempotent: a rerun replaces it)."""
    result = bills.bill_reconcile(day=date.fromisoformat(bill_date))
    _refunds_send(result.refunds)
    return {"state": result.report.state, "findings": result.report.findings,
            "applied": result.applied}


@shared_task(name="payment.tasks.bills_reconcile_dispatch_task", base=LoggedGiveUp)
def bills_reconcile_dispatch_task() -> list[str]:
    """The last BILL_RECONCILE_DAYS days (bills are T+1); a bill late one day, or a day whose
    reconciliation failed, is done again by the next run."""
    today = timezone.now().astimezone(gateway.BEIJING).date()
    days = [(today - timedelta(days=n)).isoformat()
            for n in range(1, settings.BILL_RECONCILE_DAYS + 1)]
    for day in days:
        bill_reconcile_task.delay(day)
    return days


def _refunds_send(refund_ids: list[int]) -> None:
    for refund_id in refund_ids:
        refund_process_task.delay(refund_id)
