"""Verification: is an event Alipay's, about our order, for its exact amount, and paid?

Pure checks on the stored parameters, plus `alipay.trade.query` for a return redirect (it
carries no trade status) unless a verified notification or a payment already proves the trade.
"""
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from payment import gateway
from payment.errors import EventRejected, PaymentNotConfirmed
from payment.models import EventSource

# Events holding a trade query's answer, whose signature the client checked on arrival.
TRADE_QUERY_SOURCES = frozenset({EventSource.QUERY, EventSource.BILL})
RETURN_METHODS = frozenset({"alipay.trade.page.pay.return", "alipay.trade.wap.pay.return"})


@dataclass(frozen=True)
class Verified:
    """What a verified event says: this trade of this order, for this amount, in this state."""

    event_id: int
    source: str
    order_id: str
    trade_no: str
    amount: Decimal
    trade_status: str

    @property
    def is_paid(self) -> bool:
        return self.trade_status in gateway.PAID_STATUSES


def event_authenticate(*, source: str, params: dict[str, str]) -> None:
    """It comes from Alipay, for us: signature, app_id, seller_id and its kind."""
    generation = gateway.alipay_keys_generation()
    if not gateway.signature_valid(params) and not (
            gateway.alipay_keys_refresh(generation) and gateway.signature_valid(params)):
        # The intake verified it before storing it: this process does not know the key yet
        # (a certificate another process just downloaded, a key file being rewritten).
        raise PaymentNotConfirmed("signature: the key that signed it is not known here yet")
    if params.get("app_id") != settings.ALIPAY_APPID:
        raise EventRejected(f"app_id {params.get('app_id', '')[:32]!r} is not ours")
    if settings.ALIPAY_SELLER_ID and params.get("seller_id") != settings.ALIPAY_SELLER_ID:
        raise EventRejected(f"seller_id {params.get('seller_id', '')[:32]!r} is not ours")
    if source == EventSource.RETURN and params.get("method") not in RETURN_METHODS:
        raise EventRejected("not a return redirect")
    if source == EventSource.NOTIFY and params.get("notify_type") != "trade_status_sync":
        raise EventRejected("not a trade status notification")


def event_verify(
    *, event_id: int, source: str, params: dict[str, str], order_amounts: dict[str, Decimal]
) -> Verified:
    """Check an event against Alipay's signature and our order; EventRejected if it fails,
    PaymentNotConfirmed if no key this process knows verifies it (yet).

    A query event holds a trade query response whose signature the client verified when it
    arrived: only its order and amount are checked. `order_amounts` maps our order ids to
    their amounts (fetched once per batch).
    """
    if source not in TRADE_QUERY_SOURCES:
        event_authenticate(source=source, params=params)
    order_id = params.get("out_trade_no", "")
    order_amount = order_amounts.get(order_id)
    if order_amount is None:
        raise EventRejected("out_trade_no is not one of our orders")
    amount = gateway.parse_amount(params.get("total_amount"))
    if amount is None or amount != order_amount:
        raise EventRejected(
            f"total_amount {params.get('total_amount', '')[:16]!r} "
            f"differs from the order's {order_amount}"
        )
    trade_no = params.get("trade_no", "")
    trade_status = params.get("trade_status", "")
    if not trade_no and (source == EventSource.RETURN or trade_status in gateway.PAID_STATUSES):
        # Only money needs a trade number; a closed unpaid trade may come without one.
        raise EventRejected("no trade_no")
    return Verified(event_id=event_id, source=source, order_id=order_id, trade_no=trade_no,
                    amount=amount, trade_status=trade_status)


def paid_by_notifications(
    *, stored: Iterable[dict[str, str]], order_amounts: dict[str, Decimal]
) -> set[str]:
    """The trade numbers that stored notifications prove paid, once fully verified here."""
    paid: set[str] = set()
    for params in stored:
        try:
            verified = event_verify(event_id=0, source=EventSource.NOTIFY, params=params,
                                    order_amounts=order_amounts)
        except (EventRejected, PaymentNotConfirmed):
            continue
        if verified.is_paid:
            paid.add(verified.trade_no)
    return paid


def return_confirm(*, verified: Verified, attempts: int, confirm_attempts: int) -> None:
    """Ask Alipay about a returned trade before it pays.

    Raises PaymentNotConfirmed (ask again later), EventRejected (never pays: Alipay reports
    another trade or amount, or still no payment after `confirm_attempts`) or the gateway's
    errors (try again later).
    """
    trade = gateway.trade_query(out_trade_no=verified.order_id)
    if trade is None or not trade.is_paid:
        status = trade.trade_status if trade else "TRADE_NOT_EXIST"
        if attempts >= confirm_attempts:
            raise EventRejected(f"Alipay reports the trade as {status}")
        raise PaymentNotConfirmed(status)
    if trade.trade_no != verified.trade_no:
        raise EventRejected("Alipay reports another trade_no for this order")
    if trade.total_amount != verified.amount:
        raise EventRejected(f"Alipay reports the amount {trade.total_amount}")


def returns_confirm(
    *, returns: list[tuple[Verified, int]], confirm_attempts: int
) -> dict[int, Exception | None]:
    """Confirm many returns at once with concurrent trade queries: event id -> error or None."""
    def confirm(item: tuple[Verified, int]) -> Exception | None:
        try:
            return_confirm(verified=item[0], attempts=item[1], confirm_attempts=confirm_attempts)
        except (EventRejected, PaymentNotConfirmed, gateway.GatewayUnavailable,
                gateway.GatewayRejected) as exc:
            return exc
        return None

    if len(returns) == 1:
        return {returns[0][0].event_id: confirm(returns[0])}
    results = gateway.call_pool().map(confirm, returns)
    return {item[0].event_id: result for item, result in zip(returns, results, strict=True)}
