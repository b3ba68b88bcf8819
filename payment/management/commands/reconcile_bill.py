from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from payment import gateway
from payment.reconciliation import bills
from payment.tasks import refund_process_task


class Command(BaseCommand):
    help = (
        "Reconcile a day against Alipay's trade bill (the daily job, run here): download it, "
        "compare every line with our payments and refunds, apply paid trades missing here, and "
        "store the report (admin: Bill reconciliations). Rerunning a day is safe."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", help="YYYY-MM-DD, Beijing time (default: yesterday)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["date"]:
            try:
                day = date.fromisoformat(options["date"])
            except ValueError:
                raise CommandError("--date must be YYYY-MM-DD") from None
        else:
            day = timezone.now().astimezone(gateway.BEIJING).date() - timedelta(days=1)
        try:
            result = bills.bill_reconcile(day=day)
        except gateway.GatewayUnavailable as exc:
            raise CommandError(f"Alipay could not be asked: {exc}") from None
        for refund_id in result.refunds:  # ledger refunds of late payments, to be sent
            refund_process_task.delay(refund_id)
        report = result.report
        self.stdout.write(
            f"{day}: {report.get_state_display()}; Alipay {report.alipay_trades} trades "
            f"{report.alipay_trade_amount}, ours {report.our_trades} trades "
            f"{report.our_trade_amount}; matched {report.matched}, findings {report.findings}, "
            f"applied now {result.applied}")
        for line in report.finding_rows.all()[:50]:
            self.stdout.write(f"  {line.get_outcome_display()}: {line.trade_no or '-'} "
                              f"{line.out_trade_no} alipay={line.alipay_amount} "
                              f"ours={line.our_amount} {line.note}")
