"""Benchmark: PUT /payment/status/ under concurrent load, and end-to-end apply throughput.

Reproduce:  .venv/bin/python bench/payment_status.py [--load-orders 1000] [--clients 32]
            [--queued 2000] [--worker-concurrency 4]

Real processes throughout: gunicorn (gthread) + PostgreSQL + Redis + `celery worker` + the
sandbox. Part 1 sends each order's return parameters once, from --clients threads, and
reports requests/second and p50/p99 latency of a PUT that waits for the worker's outcome
(signature, checks, alipay.trade.query, apply), then the same for reloads of already-applied
parameters. Part 2 stores --queued return events with the workers stopped, starts them and
reports payments applied per second until every order is paid.
"""
import argparse
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack, machine, percentile  # noqa: E402


def paid_orders(stack: Stack, count: int) -> list[dict[str, str]]:
    """Create `count` orders, issue their pay links, pay them in the sandbox."""
    from decimal import Decimal

    from payment import services
    from shop.models import SKU, OrderInfo, User

    user, _ = User.objects.get_or_create(username=f"bench{time.time_ns()}")
    sku = SKU.objects.create(name="bench", price=Decimal("12.34"), stock=0)
    stamp = time.strftime("%Y%m%d%H%M%S")
    orders = OrderInfo.objects.bulk_create(
        OrderInfo(order_id=f"{stamp}{i:06d}{user.pk:09d}", user=user,
                  total_amount=sku.price) for i in range(count)
    )
    urls = [services.payment_link_create(user=user, order_id=o.order_id) for o in orders]
    control = stack.sandbox_control()
    with ThreadPoolExecutor(8) as pool:
        paid = list(pool.map(control.pay, urls))
    return [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p["return_url"]).query))
            for p in paid]


def put_load(url: str, params: list[dict[str, str]], clients: int) -> tuple[float, list, dict]:
    session_per_thread: dict[int, requests.Session] = {}

    def put(p: dict[str, str]) -> tuple[float, int]:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        session.trust_env = False
        start = time.perf_counter()
        response = session.put(f"{url}/payment/status/?{urllib.parse.urlencode(p)}", timeout=30)
        return time.perf_counter() - start, response.status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(put, params))
    wall = time.perf_counter() - start
    codes: dict[int, int] = {}
    for _, code in results:
        codes[code] = codes.get(code, 0) + 1
    return wall, [r[0] for r in results], codes


def report(title: str, wall: float, latencies: list[float], codes: dict) -> None:
    print(f"{title}: {len(latencies)} requests in {wall:.2f} s = "
          f"{len(latencies) / wall:.0f} req/s; p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms; status codes {codes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-orders", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    args = parser.parse_args()

    with Stack(PAYMENT_STATUS_WAIT="10") as stack:
        stack.prepare()
        stack.start_sandbox()
        stack.sandbox_control().set_faults(notify_drop=True)  # returns only, no notifications
        print(f"machine: {machine()}; gunicorn 2 workers x 16 threads; "
              f"celery worker concurrency {args.worker_concurrency}")

        load = paid_orders(stack, args.load_orders)
        stack.start_web()
        stack.start_workers(args.worker_concurrency)
        wall, latencies, codes = put_load(stack.web_url, load, args.clients)
        report(f"PUT /payment/status/ first delivery, {args.clients} clients", wall,
               latencies, codes)
        wall, latencies, codes = put_load(stack.web_url, load, args.clients)
        report(f"PUT /payment/status/ reload (already applied), {args.clients} clients", wall,
               latencies, codes)
        for process in stack.processes:
            if process.name == "worker":
                process.stop()

        from payment import services
        from payment.models import Payment, PaymentEvent

        queued = paid_orders(stack, args.queued)
        for params in queued:
            services.event_record(source=PaymentEvent.Source.RETURN, params=params)
        before = Payment.objects.count()
        start = time.perf_counter()
        stack.start_workers(args.worker_concurrency, name="worker2")
        ready = time.perf_counter()
        while Payment.objects.count() - before < args.queued:
            if time.perf_counter() - start > 600:
                raise SystemExit("gave up after 600 s")
            time.sleep(0.2)
        done = time.perf_counter()
        print(f"end to end: {args.queued} queued return events applied in {done - ready:.2f} s "
              f"after the worker was ready = {args.queued / (done - ready):.0f} payments/s "
              f"(worker start-up {ready - start:.1f} s not counted)")
        print(f"reproduce: .venv/bin/python bench/payment_status.py --load-orders "
              f"{args.load_orders} --clients {args.clients} --queued {args.queued} "
              f"--worker-concurrency {args.worker_concurrency}")


if __name__ == "__main__":
    main()
