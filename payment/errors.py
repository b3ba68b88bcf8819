"""Exceptions of the payment domain."""


class PaymentError(Exception):
    """A request about a payment cannot be served; the message is fit for the buyer."""


class PaymentNotConfirmed(Exception):
    """Alipay does not report the trade as paid yet; ask again later."""


class EventRejected(Exception):
    """The event must never pay anything; the message is the reason kept on the event."""


class SignatureInvalid(PaymentError):
    """Well-formed parameters whose signature does not verify with Alipay's public key."""


class Throttled(PaymentError):
    """A client sent more than its throttle allows; it may try again after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests from this address; try again in {retry_after} "
                         "seconds.")
        self.retry_after = retry_after
