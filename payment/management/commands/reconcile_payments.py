from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from payment.reconciliation import claims, trades
from payment.tasks import refund_process_task


class Command(BaseCommand):
    help = (
        "Ask Alipay about every UNPAID order whose pay link is older than "
        "RECONCILE_AFTER_SECONDS and apply the payments it reports (the same work as the "
        "scheduled run, done here)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=settings.RECONCILE_BATCH_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        totals: dict[str, int] = {}
        while order_ids := claims.reconciliation_checks_claim(limit=options["batch_size"]):
            result = trades.orders_reconcile(order_ids=order_ids)
            for refund_id in result.refunds:  # ledger refunds of late payments, to be sent
                refund_process_task.delay(refund_id)
            for outcome, count in result.counts.items():
                totals[outcome] = totals.get(outcome, 0) + count
        self.stdout.write(f"reconciled: {totals or 'nothing due'}")
