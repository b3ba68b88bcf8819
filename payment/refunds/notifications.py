"""What Alipay's notifications say of refunds, matched to the ledger; never a money movement.

A partial refund is notified as TRADE_SUCCESS, a full one as TRADE_CLOSED, both with
`refund_fee` (the trade's refunds so far), `gmt_refund` and `out_biz_no` (the refund's
`out_request_no`); a later TRADE_FINISHED carries the refunds so far too. Such a notification
is verified like any other, then recorded: the refund of ours it names succeeds (once), and
what the ledger does not hold is logged as a finding for a person to look at.
"""
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from infra.logs import log_ids
from payment import gateway
from payment.models import Refund, RefundState
from payment.refunds.ledger import refund_mark_succeeded
from shop.models import OrderInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefundNotice:
    """A verified notification about the refunds of one of our trades."""

    event_id: int
    order_id: str
    trade_no: str
    trade_status: str
    out_biz_no: str  # the refund's out_request_no, when Alipay sends it
    refund_fee: Decimal | None  # the trade's refunds so far


@dataclass
class NoticesApplied:
    reasons: dict[int, str] = field(default_factory=dict)  # event id -> what it did
    wake: list[int] = field(default_factory=list)  # refunds to confirm with Alipay now


def refund_notice(*, event_id: int, order_id: str, trade_no: str,
                  params: dict[str, str]) -> RefundNotice | None:
    """The refunds a verified notification tells of; None when it tells of a payment only."""
    refund_fee = gateway.parse_amount(params.get("refund_fee"))
    out_biz_no = params.get("out_biz_no", "")
    if not (out_biz_no or params.get("gmt_refund") or (refund_fee and refund_fee > 0)):
        return None
    return RefundNotice(event_id=event_id, order_id=order_id, trade_no=trade_no,
                        trade_status=params.get("trade_status", "")[:32],
                        out_biz_no=out_biz_no[:64], refund_fee=refund_fee)


def refund_notices_apply(*, notices: list[RefundNotice]) -> NoticesApplied:
    """Match refund notifications to the ledger, in one transaction.

    A refund of ours named by `out_biz_no` succeeds; one the ledger does not know changes
    nothing. Without `out_biz_no`, the order's open refunds are confirmed with Alipay now,
    or the refunds so far are compared with the ledger's.
    """
    result = NoticesApplied()
    if not notices:
        return result
    now = timezone.now()
    with transaction.atomic():
        # Locked in one order by every batch, like payments_apply, so that batches cannot
        # deadlock; the lock serialises the orders' refund totals.
        list(OrderInfo.objects.select_for_update()
             .filter(order_id__in={n.order_id for n in notices}).order_by("order_id")
             .values_list("order_id", flat=True))
        known = {r.out_request_no: r for r in Refund.objects.select_related("payment").filter(
            out_request_no__in={n.out_biz_no for n in notices if n.out_biz_no})}
        for notice in notices:
            result.reasons[notice.event_id] = _notice_apply(notice, known, result.wake, now)
    return result


def _notice_apply(notice: RefundNotice, known: dict[str, Refund], wake: list[int],
                  now: datetime) -> str:
    fee = f"refund_fee {notice.refund_fee}" if notice.refund_fee is not None else "no refund_fee"
    if not notice.out_biz_no:
        return _unnamed_apply(notice, fee, wake, now)
    refund = known.get(notice.out_biz_no)
    if refund is None or refund.order_id != notice.order_id:
        return _finding(notice, f"refund {notice.out_biz_no} ({fee}) is not in the ledger")
    if refund.state == RefundState.SUCCEEDED or not refund_mark_succeeded(refund, "notification",
                                                                     now):
        return f"refund {notice.out_biz_no}: already succeeded"
    refund.state = RefundState.SUCCEEDED
    return f"refund {notice.out_biz_no}: succeeded ({fee})"


def _unnamed_apply(notice: RefundNotice, fee: str, wake: list[int], now: datetime) -> str:
    """A notification with the trade's refunds so far but no refund named."""
    what = f"{notice.trade_status} notification with {fee}"
    open_ids = list(Refund.objects.filter(order_id=notice.order_id,
                                          state__in=Refund.OPEN_STATES)
                    .values_list("pk", flat=True))
    if open_ids:
        Refund.objects.filter(pk__in=open_ids).update(next_attempt_at=now, updated_at=now)
        wake.extend(open_ids)
        return f"{what}: {len(open_ids)} open refund(s) to confirm with Alipay"
    ours = (Refund.objects.filter(order_id=notice.order_id, state=RefundState.SUCCEEDED)
            .aggregate(total=Sum("amount"))["total"] or Decimal("0.00"))
    if notice.refund_fee is None or notice.refund_fee == ours:
        return f"{what}: agrees with the ledger"
    return _finding(notice, f"{what}, the ledger has {ours} refunded")


def _finding(notice: RefundNotice, what: str) -> str:
    """Alipay tells of refunds the ledger does not hold: recorded for a person to look at."""
    logger.warning("finding: %s order_id=%s trade_no=%s event id=%s; nothing changed",
                   what, notice.order_id, notice.trade_no, notice.event_id,
                   extra=log_ids(order_id=notice.order_id, trade_no=notice.trade_no,
                                 event_id=notice.event_id))
    return f"finding: {what}; recorded, nothing changed"
