from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from payment.reconciliation import retention


class Command(BaseCommand):
    help = (
        "Delete settled payment events older than PAYMENT_EVENT_RETENTION_DAYS and refused-"
        "request counts older than PAYMENT_REFUSED_RETENTION_DAYS (the scheduled job, run here)."
        " Waiting and dead events are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true",
                            help="only count what would be deleted")

    def handle(self, *args: Any, **options: Any) -> None:
        pruned = retention.records_prune(dry_run=options["dry_run"])
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb}: {pruned.events} payment events older than "
            f"{settings.PAYMENT_EVENT_RETENTION_DAYS} days, {pruned.refused} refused-request "
            f"counts older than {settings.PAYMENT_REFUSED_RETENTION_DAYS} days")
