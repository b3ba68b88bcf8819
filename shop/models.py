from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.core.validators import MinValueValidator
from django.db import connections, models, router
from django.db.models import Value
from django.db.models.functions import Lower

USERNAME_TAKEN = "This username is taken."


class UserManager(DjangoUserManager["User"]):
    def with_username(self, username: str) -> "models.QuerySet[User]":
        """The user of this name, whatever its case or Unicode form ("DEMO", "ｄｅｍｏ": "demo")."""
        # LOWER() on both sides, as in the unique constraint, so that its index is used.
        return self.alias(username_lower=Lower("username")).filter(
            username_lower=Lower(Value(self.model.normalize_username(username)))
        )

    def username_key(self, username: str) -> str:
        """The name as `with_username` compares it: "DEMO", "ｄｅｍｏ" and "demo" are "demo".

        The database's own LOWER() makes it, so that it agrees with the lookup and the unique
        constraint for every character, whatever the database's collation.
        """
        # A NUL cannot be sent to PostgreSQL; no username holds one (nor U+FFFD).
        normalized = self.model.normalize_username(username).replace("\x00", "\ufffd")
        # No table to select from: Django's query API cannot evaluate an expression alone.
        with connections[router.db_for_read(self.model)].cursor() as cursor:
            cursor.execute("SELECT LOWER(%s)", [normalized])
            return str(cursor.fetchone()[0])

    def get_by_natural_key(self, username: str | None) -> "User":
        # Authentication (API token, storefront and admin sign-in) finds "demo" from "DEMO".
        return self.with_username(username or "").get()


class User(AbstractUser):
    """The shop's user; a custom model from day one so that it can grow without migrations pain."""

    objects: ClassVar[UserManager] = UserManager()

    class Meta(AbstractUser.Meta):  # type: ignore[name-defined]  # missing from the stubs
        constraints = [
            # "Demo" beside "demo" is one name: two sign-ups cannot both have it.
            models.UniqueConstraint(Lower("username"), name="shop_user_username_lower_unique",
                                    violation_error_message=USERNAME_TAKEN),
        ]


class SKU(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(
        max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
    stock = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "SKU"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="sku_stock_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name


class OrderInfo(models.Model):
    class Status(models.IntegerChoices):
        UNPAID = 1
        UNSEND = 2
        UNRECEIVED = 3
        UNCOMMENT = 4
        FINISHED = 5
        CANCELED = 6
        REFUNDED = 7  # paid, then refunded in full

    order_id = models.CharField(max_length=64, primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    total_amount = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.PositiveSmallIntegerField(
        choices=Status.choices, default=Status.UNPAID, db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "order"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.order_id

    @property
    def status_name(self) -> str:
        return self.Status(self.status).name


class OrderGoods(models.Model):
    order = models.ForeignKey(OrderInfo, on_delete=models.CASCADE, related_name="goods")
    sku = models.ForeignKey(SKU, on_delete=models.PROTECT, related_name="order_lines")
    count = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        verbose_name = "order line"
        verbose_name_plural = "order lines"

    def __str__(self) -> str:
        return f"{self.order_id}: {self.count} x {self.sku_id}"
