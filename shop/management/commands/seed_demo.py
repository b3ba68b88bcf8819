from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from shop.models import SKU, User

DEMO_SKUS = [
    ("Mechanical keyboard", Decimal("399.00"), 50),
    ("Wireless mouse", Decimal("129.50"), 100),
    ("USB-C cable", Decimal("19.90"), 500),
    ("27-inch monitor", Decimal("1899.00"), 20),
]


class Command(BaseCommand):
    help = "Create demo data: user demo/demo-pass, operator admin/admin-pass, a few SKUs."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("the demo users' passwords are published: seed_demo does not run "
                               "with DJANGO_ENV=production")
        with transaction.atomic():
            demo, created = User.objects.get_or_create(username="demo")
            if created:
                demo.set_password("demo-pass")
                demo.save()
            admin, created = User.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password("admin-pass")
                admin.save()
            for name, price, stock in DEMO_SKUS:
                SKU.objects.get_or_create(name=name, defaults={"price": price, "stock": stock})
        self.stdout.write("demo data ready: user demo / demo-pass, operator admin / admin-pass")
