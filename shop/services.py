"""Services of the shop domain: functions that write."""
import re
from collections import Counter
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from knox.models import AuthToken

from shop.models import SKU, USERNAME_TAKEN, OrderGoods, OrderInfo, User

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,29}")
USERNAME_RULE = ("A username is 3 to 30 characters: letters A-Z or a-z, digits, '.', '_' or '-', "
                 "starting with a letter or a digit.")


class OrderError(Exception):
    """An order cannot be placed as asked; the message is fit for the buyer."""


class UnpaidOrdersLimitError(OrderError):
    """The account holds as many unpaid orders as it may; one must be paid or expire first."""


class SignUpError(Exception):
    """An account cannot be created as asked; the message is fit for the person signing up."""


def user_create(*, username: str, password: str) -> User:
    # The NFKC form is what is stored and checked ("ｄｅｍｏ" is "demo"); fullwidth letters
    # fold to ASCII here, other scripts are refused so that no look-alike name can be made.
    username = User.normalize_username(username)
    if not USERNAME_PATTERN.fullmatch(username):
        raise SignUpError(USERNAME_RULE)
    validate_password(password)
    try:
        with transaction.atomic():
            if User.objects.with_username(username).exists():
                raise SignUpError(USERNAME_TAKEN)
            return User.objects.create_user(username=username, password=password)
    except IntegrityError as exc:  # a concurrent sign-up of the same name (any case) won
        raise SignUpError(USERNAME_TAKEN) from exc


@transaction.atomic
def token_create(*, user: User) -> tuple[AuthToken, str]:
    """A new API token for one client of the user (its expiry from REST_KNOX's TOKEN_TTL), and
    the token itself: only its digest is stored. The user's expired tokens are deleted."""
    AuthToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()
    auth_token, token = AuthToken.objects.create(user=user)
    return auth_token, token


def token_revoke(*, auth_token: AuthToken) -> None:
    auth_token.delete()


def _order_id_new(user: User) -> str:
    # The seed's format: creation time then the zero-padded user id; microseconds keep one
    # user's orders apart.
    return timezone.localtime().strftime("%Y%m%d%H%M%S%f") + f"{user.pk:09d}"


def order_create(*, user: User, items: list[tuple[int, int]]) -> OrderInfo:
    """Place an order for (sku_id, count) pairs, taking stock atomically."""
    counts: Counter[int] = Counter()
    for sku_id, count in items:
        if count < 1:
            raise OrderError("Each count must be at least 1.")
        counts[sku_id] += count
    if not counts:
        raise OrderError("An order needs at least one item.")

    for _ in range(3):
        try:
            with transaction.atomic():
                return _order_insert(user=user, counts=counts)
        except IntegrityError:
            continue  # the same user ordered twice in one microsecond: take a new order_id
    raise OrderError("Could not place the order, please try again.")


def _order_insert(*, user: User, counts: Counter[int]) -> OrderInfo:
    _unpaid_orders_check(user)
    skus = {sku.pk: sku for sku in SKU.objects.filter(pk__in=counts.keys())}
    missing = sorted(set(counts) - set(skus))
    if missing:
        raise OrderError(f"Unknown sku_id: {', '.join(map(str, missing))}.")
    total = Decimal("0.00")
    # Sorted so that concurrent orders take row locks in one order and cannot deadlock.
    for sku_id in sorted(counts):
        taken = SKU.objects.filter(pk=sku_id, stock__gte=counts[sku_id]).update(
            stock=F("stock") - counts[sku_id]
        )
        if not taken:
            raise OrderError(f"Not enough stock for {skus[sku_id].name}.")
        total += skus[sku_id].price * counts[sku_id]
    order = OrderInfo.objects.create(
        order_id=_order_id_new(user), user=user, total_amount=total.quantize(Decimal("0.01"))
    )
    OrderGoods.objects.bulk_create(
        OrderGoods(order=order, sku_id=sku_id, count=count, price=skus[sku_id].price)
        for sku_id, count in sorted(counts.items())
    )
    return order


def _unpaid_orders_check(user: User) -> None:
    """Refuse a new order to an account that holds ORDER_MAX_UNPAID unpaid ones already.

    Call inside the order's transaction: the lock on the user's row makes one account's
    placements wait for each other, so two at once cannot both take the last free slot.
    """
    limit = settings.ORDER_MAX_UNPAID
    if limit <= 0:
        return
    # NO KEY UPDATE makes placements wait for each other, not rows that merely refer to the user.
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk").get()
    unpaid = OrderInfo.objects.filter(user=user, status=OrderInfo.Status.UNPAID).count()
    if unpaid >= limit:
        minutes = round(settings.ORDER_PAY_TIMEOUT_SECONDS / 60)
        raise UnpaidOrdersLimitError(
            f"You have {unpaid} unpaid orders, the most one account may hold. Pay one of them "
            f"(see My orders) or wait until it expires ({minutes} minutes after it was "
            "placed), then order again."
        )


def order_stock_return(*, order: OrderInfo) -> None:
    """Give the order's items back to stock; call inside the transaction that cancels it."""
    for line in order.goods.order_by("sku_id"):
        SKU.objects.filter(pk=line.sku_id).update(stock=F("stock") + line.count)
