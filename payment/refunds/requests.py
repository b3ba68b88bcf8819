"""Asking for a refund: the one service behind the admin's form and the staff API.

The order's row lock makes the check and the insert one step: the refunds of a payment that
are not failed, this one included, never add up to more than it paid, however many requests
arrive at once. The row, with the `out_request_no` every try will carry, is committed before
the workers are woken; Alipay checks the amount again when it is sent.

An idempotency key is the staff member's own: the same key from the same member returns the
refund it made; the same key from another member is another request (keys are chosen by each
client, which cannot know the others' keys, and must never be shown another member's refund).
The API's `Idempotency-Key` header and the admin form's hidden token go the same way.
"""
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from payment import metrics
from payment.models import Payment, Refund
from payment.refunds.ledger import refund_log_ids, refunds_committed, request_numbers
from payment.tasks import refund_process_task
from shop.models import OrderInfo, User

logger = logging.getLogger(__name__)

MAX_AMOUNT = Decimal("99999999.99")  # the column's ten digits
MAX_REASON_LENGTH = 256  # Alipay's refund_reason
MAX_IDEMPOTENCY_KEY_LENGTH = 200
# Yuan as a person types them: "10", "10.5", "12.50"; at most the column's eight whole digits.
AMOUNT_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,7})(?:\.[0-9]{1,2})?")
AMOUNT_FORMAT = ("An amount is a number of yuan from 0.01 to 99999999.99 in ASCII digits with "
                 "at most two decimals, such as 12.50: no leading zero, space, sign or exponent.")
# Visible ASCII but the comma: two headers of the same name reach a view joined by a comma.
IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")
IDEMPOTENCY_KEY_FORMAT = (
    f"Send one Idempotency-Key header of 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII "
    "characters other than a comma (two headers arrive joined by a comma).")


class RefundError(Exception):
    """A refund cannot be asked for as given; the message is fit for the staff who asked."""


class RefundInvalid(RefundError):
    """The amount, reason or key is not acceptable."""


class RefundOrderNotFound(RefundError):
    pass


class RefundConflict(RefundError):
    """The order's state does not allow it: not paid, or not that much left to refund."""


class IdempotencyKeyReused(RefundError):
    """The key was used for a request with another order, amount or reason."""


def refund_amount_parse(text: str) -> Decimal:
    """The amount a staff member typed or sent, read exactly; the API and the admin's form
    both read it here.

    Decimal alone would take "1e1", " 10.00", "099.00" or fullwidth "１０.００" as amounts
    (and Django's and DRF's decimal fields strip spaces first): each is refused instead.
    """
    if not AMOUNT_TEXT.fullmatch(text) or (amount := Decimal(text)) < Decimal("0.01"):
        raise RefundInvalid(AMOUNT_FORMAT)
    return amount.quantize(Decimal("0.01"))


def idempotency_key_check(key: str) -> str:
    """The key as given, or RefundInvalid: one to 200 visible ASCII characters, no comma."""
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise RefundInvalid(IDEMPOTENCY_KEY_FORMAT)
    return key


@dataclass(frozen=True)
class RefundRequested:
    refund: Refund
    created: bool  # False: the refund an earlier request with the same key made


def refund_request(
    *,
    order_id: str,
    amount: Decimal,
    reason: str,
    requested_by: User | None,
    source: str = Refund.Source.STAFF_API,
    idempotency_key: str = "",
    payment_id: int | None = None,
) -> RefundRequested:
    """Refund `amount` of the payment that paid the order; the refund runs on the workers.

    With an `idempotency_key`, a repeat of the same request by the same `requested_by`
    returns the refund the first one made instead of a second. `payment_id`, when given, must
    be that payment (the admin's form is on a payment's page).
    """
    amount = _amount_check(amount)
    reason = reason.strip()
    if not reason:
        raise RefundInvalid("A reason is required.")
    if len(reason) > MAX_REASON_LENGTH:
        raise RefundInvalid(f"The reason is at most {MAX_REASON_LENGTH} characters.")
    if idempotency_key:
        idempotency_key_check(idempotency_key)
        if requested_by is None:
            raise ValueError("an idempotency key is a staff member's own: give requested_by")
    try:
        with transaction.atomic():
            return _refund_request(order_id=order_id, amount=amount, reason=reason,
                                   requested_by=requested_by, source=source,
                                   idempotency_key=idempotency_key, payment_id=payment_id)
    except IntegrityError:
        # The same member's key, sent at the same moment for another order, was stored first.
        existing = (_keyed(requested_by, idempotency_key) if idempotency_key else None)
        if existing is None:
            raise
        return _replayed(existing, order_id=order_id, amount=amount, reason=reason)


def _refund_request(*, order_id: str, amount: Decimal, reason: str, requested_by: User | None,
                    source: str, idempotency_key: str,
                    payment_id: int | None) -> RefundRequested:
    order = OrderInfo.objects.select_for_update().filter(order_id=order_id).first()
    if order is None:
        raise RefundOrderNotFound(f"There is no order {order_id}.")
    if idempotency_key:
        existing = _keyed(requested_by, idempotency_key)
        if existing is not None:
            return _replayed(existing, order_id=order_id, amount=amount, reason=reason)
    payment = Payment.objects.filter(order=order, status=Payment.Status.APPLIED).first()
    if payment is None:
        late = Payment.objects.filter(order=order).exclude(status=Payment.Status.APPLIED)
        raise RefundConflict(
            f"Order {order_id} is not paid: there is nothing to refund."
            + (" The payment that arrived after it closed is refunded on its own."
               if late.exists() else ""))
    if payment_id is not None and payment.pk != payment_id:
        raise RefundConflict("This payment did not pay its order: it is refunded on its own.")
    left = payment.amount - refunds_committed(payment_id=payment.pk)
    if amount > left:
        raise RefundConflict(
            f"{amount} is more than is left to refund of order {order_id}: {left} of the "
            f"{payment.amount} paid (refunds made or under way count).")
    refund = Refund.objects.create(
        order=order, payment=payment, amount=amount, reason=reason,
        out_request_no=request_numbers([order_id])(order_id),
        idempotency_key=idempotency_key, source=source, requested_by=requested_by,
        next_attempt_at=timezone.now(),
    )
    transaction.on_commit(lambda: _workers_wake(refund.pk))
    transaction.on_commit(lambda: metrics.refund_entered(Refund.State.REQUESTED))
    logger.info("refund requested order_id=%s out_request_no=%s amount=%s source=%s "
                "user_id=%s", order_id, refund.out_request_no, amount, source,
                requested_by.pk if requested_by else None, extra=refund_log_ids(refund))
    return RefundRequested(refund, created=True)


def _keyed(requested_by: User | None, idempotency_key: str) -> Refund | None:
    """The refund this member's earlier request with this key made."""
    return Refund.objects.filter(requested_by=requested_by,
                                 idempotency_key=idempotency_key).first()


def _replayed(existing: Refund, *, order_id: str, amount: Decimal,
              reason: str) -> RefundRequested:
    if (existing.order_id, existing.amount, existing.reason) != (order_id, amount, reason):
        raise IdempotencyKeyReused(
            "You sent this Idempotency-Key with another refund request (another order, amount "
            "or reason); send a new key for a new refund.")
    return RefundRequested(existing, created=False)


def _amount_check(amount: Decimal) -> Decimal:
    try:
        valid = (amount.is_finite() and amount > 0 and amount <= MAX_AMOUNT
                 and amount == amount.quantize(Decimal("0.01")))
    except (InvalidOperation, AttributeError):
        valid = False
    if not valid:
        raise RefundInvalid("The amount must be a positive number of yuan with at most two "
                            "decimals.")
    return amount.quantize(Decimal("0.01"))


def _workers_wake(refund_id: int) -> None:
    try:
        refund_process_task.delay(refund_id)
    except BrokerError as exc:  # stored: the sweeper sends it once the broker is back
        logger.warning("refund not sent to the workers now refund_id=%s: %s", refund_id, exc)
