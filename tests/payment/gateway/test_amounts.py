"""Amounts are read as Alipay writes them, two decimals in ASCII, or not at all."""
from decimal import Decimal

import pytest

from payment.errors import EventRejected
from payment.models import PaymentEvent
from payment.processing.verification import event_verify

ORDER = "20261126000000000000000000042"


def _verify(total_amount: str) -> Decimal:
    # A query event: Alipay's response signature was checked by the client, so only the
    # order and the amount are checked here.
    params = {"out_trade_no": ORDER, "trade_no": "T42", "total_amount": total_amount,
              "trade_status": "TRADE_SUCCESS"}
    return event_verify(event_id=1, source=PaymentEvent.Source.QUERY, params=params,
                        order_amounts={ORDER: Decimal("10.00")}).amount


def test_alipays_own_amount_is_accepted() -> None:
    assert _verify("10.00") == Decimal("10.00")


@pytest.mark.parametrize("amount", ["1e1", "１０.００", " 10.00", "10.0", "10", "+10.00",
                                    "10.000", "0010.00x", "NaN"])
def test_lenient_forms_of_the_amount_are_rejected(amount: str) -> None:
    with pytest.raises(EventRejected, match="total_amount"):
        _verify(amount)
