"""Rows the tests start from: factory_boy factories for users, staff, SKUs, orders, pay links
(attempts) and payments; "an order with a pay link", an order with goods rows, an API client
signed in as a user; and rows placed at chosen times for the dashboard's figures."""
import itertools
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth.models import Permission
from django.db.models import F
from django.utils import timezone
from factory.django import DjangoModelFactory

from payment.links import payment_link_create
from payment.models import BillFinding, BillReport, Payment, PaymentAttempt, PaymentEvent, Refund
from shop.models import SKU, OrderGoods, OrderInfo, User
from shop.services import token_create
from tests.support import ShopClient

# Order ids unique across test runs that share a sandbox store: the start time, then a count.
_RUN = time.strftime("%Y%m%d%H%M%S")


class UserFactory(DjangoModelFactory[User]):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"buyer{n}")
    password = factory.django.Password("buyer-pass-123")


class StaffFactory(UserFactory):
    """Staff, not a superuser, with `permissions` given as "app_label.codename" names."""

    class Meta:
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"operator{n}")
    is_staff = True

    @factory.post_generation
    def permissions(self, create: bool, extracted: list[str] | None, **kwargs: Any) -> None:
        for name in extracted or ():
            app_label, codename = name.split(".")
            self.user_permissions.add(  # type: ignore[attr-defined]
                Permission.objects.get(content_type__app_label=app_label, codename=codename))


class SKUFactory(DjangoModelFactory[SKU]):
    class Meta:
        model = SKU

    name = factory.Sequence(lambda n: f"Product {n}")
    price = Decimal("9.90")
    stock = 100


class OrderFactory(DjangoModelFactory[OrderInfo]):
    """An UNPAID order (no goods rows: payments only need its id and total)."""

    class Meta:
        model = OrderInfo

    order_id = factory.Sequence(lambda n: f"{_RUN}{n:012d}")
    user = factory.SubFactory(UserFactory)
    total_amount = Decimal("9.90")


class PaymentAttemptFactory(DjangoModelFactory[PaymentAttempt]):
    """The pay link of an order, issued at `started_at` (now unless given)."""

    class Meta:
        model = PaymentAttempt

    order = factory.SubFactory(OrderFactory)
    amount = factory.SelfAttribute("order.total_amount")
    started_at = factory.LazyFunction(timezone.now)
    last_started_at = factory.SelfAttribute("started_at")


class PaymentFactory(DjangoModelFactory[Payment]):
    """A payment that paid its order, as the workers leave it (no trade at the sandbox):
    `PaymentFactory().order` is a paid (UNSEND) order."""

    class Meta:
        model = Payment

    order = factory.SubFactory(OrderFactory, status=OrderInfo.Status.UNSEND)
    # Alipay's trade numbers are 28 digits; unique across runs, as the order ids.
    trade_id = factory.Sequence(lambda n: f"{_RUN}22001{n:09d}")
    amount = factory.SelfAttribute("order.total_amount")
    source = PaymentEvent.Source.NOTIFY


def order_with_goods(lines: list[tuple[SKU, int]], **fields: Any) -> OrderInfo:
    """An UNPAID order of these (sku, count) lines as placing it leaves it: its total is
    theirs and their stock is taken."""
    total = sum((sku.price * count for sku, count in lines), Decimal("0.00"))
    order = OrderFactory.create(total_amount=total, **fields)
    for sku, count in lines:
        SKU.objects.filter(pk=sku.pk).update(stock=F("stock") - count)
        OrderGoods.objects.create(order=order, sku=sku, count=count, price=sku.price)
    return order


def order_with_link(**fields: Any) -> tuple[OrderInfo, str]:
    """An order and its signed pay link (which records the payment attempt)."""
    order = OrderFactory.create(**fields)
    return order, payment_link_create(user=order.user, order_id=order.order_id)


def orders_with_links(count: int, **fields: Any) -> list[tuple[OrderInfo, str]]:
    """`count` orders of one buyer, each with its pay link."""
    fields.setdefault("user", UserFactory.create())
    return [order_with_link(**fields) for _ in range(count)]


def signed_in(client: ShopClient, user: User) -> ShopClient:
    """The API client with an API token of `user`, as signing in at /authorizations/ gives."""
    _, token = token_create(user=user)
    client.session.headers["Authorization"] = f"Token {token}"
    return client


def sku_create(name: str = "Keyboard", price: str = "99.50", stock: int = 100) -> SKU:
    return SKUFactory.create(name=name, price=Decimal(price), stock=stock)


# -- payments as they stand after the fact, at chosen times (the dashboard's figures) ----------

_sequence = itertools.count(1)


def paid_order_create(
    *, source: str = "notify", paid_at: datetime | None = None,
    link_at: datetime | None = None, amount: str = "10.00",
    status: str = Payment.Status.APPLIED,
) -> Payment:
    """An order, its pay link issued at `link_at` (none if None) and its payment at `paid_at`."""
    order = OrderFactory.create(total_amount=Decimal(amount), status=OrderInfo.Status.UNSEND)
    if link_at is not None:
        PaymentAttemptFactory.create(order=order, started_at=link_at)
    payment = PaymentFactory.create(order=order, source=source, status=status)
    Payment.objects.filter(pk=payment.pk).update(created_at=paid_at or timezone.now())
    payment.refresh_from_db()
    return payment


def event_create(*, state: str, received_at: datetime | None = None, source: str = "notify",
                 last_error: str = "") -> PaymentEvent:
    n = next(_sequence)
    event = PaymentEvent.objects.create(
        source=source, dedupe_key=f"factory-{n}", out_trade_no=f"F{n:019d}", raw_data={},
        state=state, last_error=last_error,
    )
    PaymentEvent.objects.filter(pk=event.pk).update(received_at=received_at or timezone.now())
    event.refresh_from_db()
    return event


def attempt_checked_create(*, result: str, checked_at: datetime) -> PaymentAttempt:
    """An unpaid order whose pay link reconciliation last checked at `checked_at`."""
    return PaymentAttemptFactory.create(
        order__total_amount=Decimal("5.00"), started_at=checked_at - timedelta(minutes=5),
        checks=1, last_checked_at=checked_at, last_check_result=result,
    )


def refund_create(*, payment: Payment, state: str, requested_at: datetime,
                  amount: str = "1.00", last_error: str = "") -> Refund:
    n = next(_sequence)
    refund = Refund.objects.create(
        order=payment.order, payment=payment, amount=Decimal(amount), reason="factory",
        out_request_no=f"R{n:019d}", state=state, source=Refund.Source.OPERATOR,
        last_error=last_error,
    )
    Refund.objects.filter(pk=refund.pk).update(requested_at=requested_at)
    refund.refresh_from_db()
    return refund


def bill_report_create(*, day: date, findings: dict[str, int], matched: int = 0) -> BillReport:
    now = timezone.now()
    report = BillReport.objects.create(bill_date=day, state=BillReport.State.DONE,
                                       matched=matched, findings=sum(findings.values()),
                                       started_at=now, finished_at=now)
    BillFinding.objects.bulk_create(
        BillFinding(report=report, outcome=outcome, trade_no=f"{outcome}-{i}")
        for outcome, count in findings.items() for i in range(count)
    )
    return report
