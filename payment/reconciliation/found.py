"""Paid trades a trade query found (reconciliation, expiry, a bill's missing trades): stored as
events and applied through the common batch path."""
import logging
from dataclasses import dataclass

from payment import event_store, gateway
from payment.models import EventSource, PaymentEvent
from payment.processing.batch import events_process

logger = logging.getLogger(__name__)


@dataclass
class FoundApplied:
    counts_by_order: dict[str, str]
    refunds: list[int]


def trades_found_apply(*, trades: list[tuple[str, gateway.TradeStatus]],
                       source: str = EventSource.QUERY) -> FoundApplied:
    """Record paid trades a query found (for reconciliation, or to confirm a line of the
    bill), and apply them through the common batch path."""
    ids: dict[int, str] = {}
    for order_id, trade in trades:
        params = {k: str(v) for k, v in trade.raw.items() if not isinstance(v, list | dict)}
        params.setdefault("out_trade_no", order_id)
        stored = event_store.event_insert(source=source, params=params)
        ids[stored.id] = order_id
    try:
        batch = events_process(limit=len(ids), event_ids=list(ids))
    except Exception as exc:  # noqa: BLE001  (stored; the sweeper takes it up again)
        logger.warning("query events left for the sweeper ids=%s: %s", list(ids), exc)
        return FoundApplied({}, [])
    states = dict(PaymentEvent.objects.filter(pk__in=ids).values_list("pk", "state"))
    return FoundApplied({ids[pk]: str(state) for pk, state in states.items()}, batch.refunds)
