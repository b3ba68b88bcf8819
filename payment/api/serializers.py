"""Serializers of the payment API: pay links, payment status, refunds, error bodies."""
from decimal import Decimal
from typing import Any

from rest_framework import serializers

from payment.models import PaymentEvent, Refund
from payment.refunds.requests import AMOUNT_FORMAT, RefundInvalid, refund_amount_parse
from shop.models import OrderInfo
from shop.serializers import ApiModelSerializer, UTCDateTimeField


class AmountField(serializers.DecimalField):
    """Yuan as text or a JSON number, read by the one parser the admin's form uses too:
    "12.50", "10", 12.5; not "1e3", "099.00", " 10.00", "１２" nor 1e1.

    A number with a fraction arrives as written only from `ExactNumbersJSONParser`; a float
    (its text lost) is refused.
    """

    default_error_messages = {"invalid": AMOUNT_FORMAT}

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, int) and not isinstance(data, bool):
            data = str(data)
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return refund_amount_parse(data)
        except RefundInvalid:
            self.fail("invalid")


class RefundInputSerializer(serializers.Serializer):
    amount = AmountField(
        max_digits=10, decimal_places=2, min_value=Decimal("0.01"),
        help_text="yuan, at most two decimals; at most what is left to refund",
    )
    reason = serializers.CharField(
        max_length=256,
        help_text="for the buyer: sent to Alipay as refund_reason and shown in the order's "
                  "payment status",
    )


class RefundSerializer(ApiModelSerializer):
    order_id = serializers.CharField(read_only=True)

    class Meta:
        model = Refund
        fields = ["id", "order_id", "out_request_no", "amount", "reason", "state", "sub_code",
                  "source", "attempts", "queries", "last_error", "requested_at", "sent_at",
                  "succeeded_at", "failed_at"]
        read_only_fields = fields


class BuyerRefundSerializer(serializers.Serializer):
    """A refund as its buyer sees it in the order's payment status."""

    amount = serializers.DecimalField(max_digits=10, decimal_places=2)
    state = serializers.ChoiceField(choices=["processing", "succeeded", "failed"])
    reason = serializers.CharField()
    requested_at = UTCDateTimeField()
    succeeded_at = UTCDateTimeField(allow_null=True)


class MessageSerializer(serializers.Serializer):
    """Every error body: what went wrong, fit to show the buyer."""

    message = serializers.CharField()


class PaymentLinkSerializer(serializers.Serializer):
    alipay_url = serializers.URLField(
        help_text="the signed page-pay URL: send the buyer's browser there; it expires with "
                  "the order (time_expire)")


class LatestEventSerializer(serializers.Serializer):
    # A field named like Field.source: DRF takes declared fields off the class.
    source = serializers.ChoiceField(choices=PaymentEvent.Source.choices)  # type: ignore[assignment]
    state = serializers.ChoiceField(choices=PaymentEvent.State.choices)
    received_at = UTCDateTimeField()


class PaymentHistorySerializer(LatestEventSerializer):
    reason = serializers.CharField(help_text="why it was rejected or only recorded")
    trade_no = serializers.CharField()
    deliveries = serializers.IntegerField(help_text="how many times it arrived")


class PaymentStatusSerializer(serializers.Serializer):
    """An order's payment state, as the storefront polls it."""

    order_id = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.name for s in OrderInfo.Status],
                                     help_text="the order's status by name")
    trade_id = serializers.CharField(allow_null=True, help_text="Alipay's trade number once paid")
    paid_at = UTCDateTimeField(allow_null=True, help_text="when the payment was applied")
    paid_amount = serializers.DecimalField(max_digits=10, decimal_places=2, allow_null=True)
    canceled_by = serializers.ChoiceField(
        choices=["expiry", "buyer"], allow_null=True,
        help_text="a canceled order: expiry (not paid by its pay-by time) or its buyer")
    cancel_reason = serializers.CharField(allow_null=True, help_text="why it was canceled")
    canceled_at = UTCDateTimeField(allow_null=True)
    latest_event = LatestEventSerializer(allow_null=True)
    history = PaymentHistorySerializer(many=True, help_text="the latest 50 events, newest first")
    refunds = BuyerRefundSerializer(many=True)
