"""Benchmark: reconciling a day against Alipay's trade bill, for 10,000 and 100,000 trades.

Reproduce:  .venv/bin/python bench/bills.py [--sizes 10000,100000] [--repeat 3]

For each size the sandbox generates that many paid trades (and one refund per hundred) on a
past day in its store; this process puts the same payments in PostgreSQL (found through the
bill, bulk-inserted), then a fresh child process times `bills.bill_reconcile` for that day:
bill URL, download, GBK CSV streamed into bill lines, comparison, report. The child reports
its peak RSS (VmHWM) above its RSS once Django is loaded: it must stay flat from 10,000
to 100,000 trades (the bill is streamed, never loaded whole). Target: under 60 s for 100,000
trades.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack, machine  # noqa: E402

PRICE = "9.90"


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory, or with "VmHWM" its peak. Not ru_maxrss: Linux carries
    that over exec from the forked parent, whose size would then count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(day: str) -> None:
    """One reconciliation in a fresh process; prints its figures as JSON."""
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from payment import gateway
    from payment.reconciliation import bills

    gateway.client_warm()
    base = rss_mib()
    started = time.perf_counter()
    result = bills.bill_reconcile(day=date.fromisoformat(day))
    seconds = time.perf_counter() - started
    peak = rss_mib("VmHWM")
    print(json.dumps({"seconds": seconds, "base_mib": base, "peak_mib": peak,
                      "findings": result.report.findings}))


def our_books(day: date, prefix: str) -> int:
    """Payments here for every trade of the day's bill: orders and payments bulk-inserted."""
    from django.utils import timezone

    from payment import gateway
    from payment.models import Payment
    from payment.reconciliation import bills
    from shop.models import OrderInfo, User

    url = gateway.bill_download_url(bill_date=day.isoformat())
    assert url, "the sandbox has no bill for the day"
    with tempfile.TemporaryFile() as bill:
        gateway.bill_download(url=url, into=bill)
        bill.seek(0)
        trades = [(r.out_trade_no, r.trade_no) for r in bills.bill_rows(bill)
                  if r.kind == "trade"]
    user, _ = User.objects.get_or_create(username="billbench")
    paid_at = datetime.combine(day, datetime.min.time(), tzinfo=gateway.BEIJING) + timedelta(
        hours=12)
    for start in range(0, len(trades), 10000):
        chunk = trades[start:start + 10000]
        OrderInfo.objects.bulk_create(
            OrderInfo(order_id=o, user=user, total_amount=Decimal(PRICE),
                      status=OrderInfo.Status.UNSEND) for o, _ in chunk)
        Payment.objects.bulk_create(
            Payment(order_id=o, trade_id=t, amount=Decimal(PRICE), source="notify")
            for o, t in chunk)
    Payment.objects.filter(order__order_id__startswith=prefix).update(created_at=paid_at)
    assert timezone.now() > paid_at
    return len(trades)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    with Stack(db_name="bench_bills") as stack:
        stack.prepare()
        stack.start_sandbox()
        control = stack.sandbox_control()

        print(f"machine: {machine()}")
        print("command: .venv/bin/python bench/bills.py "
              f"--sizes {args.sizes} --repeat {args.repeat}")
        print(f"{'trades':>8} {'refunds':>8} {'run':>4} {'seconds':>8} {'peak RSS +MiB':>14} "
              f"{'findings':>9}")
        results: dict[int, list[tuple[float, float]]] = {}
        for index, size in enumerate(sizes):
            day = date(2026, 1, 10) + timedelta(days=index)
            prefix = f"bill{index}x"
            started = time.perf_counter()
            control.generate_trades(day.isoformat(), size, refunds=size // 100, amount=PRICE,
                                    prefix=prefix, width=7)
            generated = time.perf_counter() - started
            held = our_books(day, prefix)
            print(f"  (set-up: {size} trades generated in {generated:.1f} s, {held} payments "
                  "inserted here)")
            for run in range(1, args.repeat + 1):
                process = subprocess.run(
                    [sys.executable, __file__, "--child", day.isoformat()], env=stack.env,
                    capture_output=True, text=True, check=True)
                figures = json.loads(process.stdout.strip().splitlines()[-1])
                elapsed, grown = figures["seconds"], figures["peak_mib"] - figures["base_mib"]
                results.setdefault(size, []).append((elapsed, grown))
                print(f"{size:>8} {size // 100:>8} {run:>4} {elapsed:>8.1f} {grown:>14.1f} "
                      f"{figures['findings']:>9}")
        print()
        for size, runs in results.items():
            seconds = statistics.median(r[0] for r in runs)
            memory = statistics.median(r[1] for r in runs)
            verdict = "under" if seconds < 60 else "OVER"
            print(f"{size} trades: median {seconds:.1f} s ({verdict} the 60 s target), "
                  f"median peak RSS growth {memory:.1f} MiB")
        if len(results) > 1:
            small, large = min(results), max(results)
            growth = (statistics.median(r[1] for r in results[large])
                      - statistics.median(r[1] for r in results[small]))
            print(f"memory from {small} to {large} trades: {growth:+.1f} MiB "
                  f"({large // small}x the lines)")


if __name__ == "__main__":
    main()
