"""Benchmark: unpaid orders checked per second by reconciliation, against the sandbox with
100 ms of injected gateway latency on every trade query.

Reproduce:  .venv/bin/python bench/reconcile.py [--orders 10000] [--latency-ms 100]
            [--levels 4,16,32,64] [--slice 1500]

Part 1 runs `orders_reconcile` in this process over a fresh slice of claimed orders for each
concurrency setting. Part 2 checks all --orders through the real path: the dispatch task
claims batches, two `celery worker` processes check them with GATEWAY_CONCURRENCY=32.
One order in ten is paid at the sandbox and must end paid.
"""
import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack, machine  # noqa: E402


def link_expires() -> datetime:
    """time_expire for a benchmark's pay link: well after the run."""
    return datetime.now(UTC) + timedelta(hours=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--levels", default="4,16,32,64")
    parser.add_argument("--slice", type=int, default=1500)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with Stack(GATEWAY_CONCURRENCY="32", RECONCILE_BATCH_SIZE="200") as stack:
        stack.prepare()
        stack.start_sandbox()
        control = stack.sandbox_control()
        control.set_faults(notify_drop=True, drop_return=True)

        from django.conf import settings
        from django.utils import timezone

        from payment import gateway
        from payment.models import PaymentAttempt
        from payment.reconciliation import claims, trades
        from shop.models import OrderInfo, User

        user = User.objects.create_user(username="bench", password="x" * 12)
        stamp = time.strftime("%Y%m%d%H%M%S")
        orders = OrderInfo.objects.bulk_create(
            OrderInfo(order_id=f"{stamp}{i:06d}{user.pk:09d}", user=user,
                      total_amount=Decimal("9.90")) for i in range(args.orders)
        )
        past = timezone.now() - timedelta(minutes=5)
        PaymentAttempt.objects.bulk_create(
            PaymentAttempt(order=o, amount=o.total_amount, started_at=past,
                           last_started_at=past, next_check_at=None) for o in orders
        )
        paid_ids = [o.order_id for o in orders[::10]]
        for order_id in paid_ids:
            control.pay(gateway.page_pay_url(out_trade_no=order_id,
                                            total_amount=Decimal("9.90"), subject="bench",
                                            time_expire=link_expires()))
        control.set_faults(notify_drop=True, drop_return=True, latency_ms=args.latency_ms,
                           methods=["alipay.trade.query"])
        print(f"machine: {machine()}; {args.orders} unpaid orders ({len(paid_ids)} paid at "
              f"the sandbox), {args.latency_ms} ms injected on alipay.trade.query")

        cursor = 0
        for level in levels:
            ids = [o.order_id for o in orders[cursor:cursor + args.slice]]
            cursor += args.slice
            PaymentAttempt.objects.filter(order_id__in=ids).update(next_check_at=past)
            claimed = []
            while batch := claims.reconciliation_checks_claim(limit=500):
                claimed += batch
            start = time.perf_counter()
            settings.GATEWAY_CONCURRENCY = level
            gateway.call_pool_reset()
            counts = trades.orders_reconcile(order_ids=claimed).counts
            wall = time.perf_counter() - start
            print(f"in-process, concurrency {level:>3}: {len(claimed)} checks in {wall:.2f} s "
                  f"= {len(claimed) / wall:.0f} checks/s ({counts})")

        PaymentAttempt.objects.filter(order__status=OrderInfo.Status.UNPAID).update(
            next_check_at=past, claimed_until=None)
        remaining = PaymentAttempt.objects.filter(order__status=OrderInfo.Status.UNPAID).count()
        stack.start_workers(concurrency=2, queues="reconcile", name="w1")
        stack.start_workers(concurrency=2, queues="reconcile,payments", name="w2")
        from payment.tasks import reconcile_dispatch_task

        started_at = timezone.now()
        start = time.perf_counter()
        reconcile_dispatch_task.delay()
        while PaymentAttempt.objects.filter(last_checked_at__gte=started_at).count() < remaining:
            if time.perf_counter() - start > 900:
                raise SystemExit("gave up after 900 s")
            time.sleep(0.5)
        wall = time.perf_counter() - start
        paid = OrderInfo.objects.filter(order_id__in=paid_ids,
                                        status=OrderInfo.Status.UNSEND).count()
        print(f"workers (2 processes x 2, GATEWAY_CONCURRENCY=32): {remaining} checks in "
              f"{wall:.1f} s = {remaining / wall:.0f} checks/s; paid found {paid}/"
              f"{len(paid_ids)}")
        print(f"reproduce: .venv/bin/python bench/reconcile.py --orders {args.orders} "
              f"--latency-ms {args.latency_ms} --levels {args.levels} --slice {args.slice}")


if __name__ == "__main__":
    main()
