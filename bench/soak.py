"""Soak: a million notifications through the real web, workers and beat, with retention on.

Reproduce:  .venv/bin/python bench/soak.py [--events 1000000] [--chunk 10000]
            [--sample-every 50000] [--rate 0] [--connections 8] [--db soak_events]
            [--redis-port 6398] [--retention-interval 60]

The Procfile's web, worker and beat lines run on a fresh PostgreSQL database and a private
redis-server, with the sandbox as Alipay. Unpaid orders are bulk-inserted a chunk at a time;
their TRADE_SUCCESS notifications are signed with the sandbox's Alipay key in a pool of
processes, a chunk or two ahead, and POSTed once each to /payment/alipay/notify/ by an
asyncio driver over keep-alive connections (at --rate a second, or as fast as the intake
answers), while the workers apply them. Nothing holds more than a few chunks in memory.

Retention is the project's own: beat sends payment.tasks.records_prune_task every
--retention-interval seconds (PAYMENT_RETENTION_INTERVAL_SECONDS) and the horizon is
PAYMENT_EVENT_RETENTION_DAYS=0, so every settled event received before a run is deleted by
it; the payments stay.

Every --sample-every events sent: payments applied, RSS of the web and worker process
trees, the size of the events table (heap) and of each of its indexes, its live and dead
tuples. At the end every notified order must be paid exactly once (as many payments as
notifications, one per order, distinct trade numbers, every answer `success`), the RSS of
web and worker must stay within --rss-tolerance of its value at the --flat-from-th event
(100,000, or a fifth of a shorter run) in every later sample, and the events table with its
indexes must end no larger than --size-tolerance times its size then. Exits 1 otherwise.
"""
import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare  # noqa: E402
from bench.stack import ROOT, Stack, machine, tree_rss  # noqa: E402
from tests.support import APP_ID, SELLER_ID, ManagedProcess, sign_params, wait_for  # noqa: E402

NOTIFY_PATH = "/payment/alipay/notify/"
AMOUNT = Decimal("12.34")
CHINA = ZoneInfo("Asia/Shanghai")
TAG = "S"
EVENTS_TABLE = "payment_paymentevent"


# -- notifications, signed in other processes -----------------------------------------

def order_id(serial: int) -> str:
    return f"{TAG}{serial:09d}"


def notification(serial: int, now: str) -> dict[str, str]:
    """Alipay's TRADE_SUCCESS notification for order `serial` (as compare.py makes them)."""
    oid = order_id(serial)
    return {
        "notify_time": now, "notify_type": "trade_status_sync", "notify_id": f"soak{serial}",
        "app_id": APP_ID, "auth_app_id": APP_ID, "charset": "utf-8", "version": "1.0",
        "sign_type": "RSA2", "trade_no": f"2099{serial:020d}", "out_trade_no": oid,
        "buyer_id": "2088000000009999", "seller_id": SELLER_ID, "trade_status": "TRADE_SUCCESS",
        "total_amount": f"{AMOUNT:.2f}", "receipt_amount": f"{AMOUNT:.2f}",
        "buyer_pay_amount": f"{AMOUNT:.2f}", "subject": f"soak {oid}", "gmt_create": now,
        "gmt_payment": now,
    }


def sign_range(start: int, count: int) -> list[str]:
    """In a signing process: the form bodies of notifications start .. start+count-1."""
    now = datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    return [compare.signed_query(notification(serial, now))
            for serial in range(start, start + count)]


class Signer:
    """A pool of spawned processes signing chunks ahead of the sender, at most `ahead`."""

    def __init__(self, pem: bytes, processes: int, chunk: int, total: int, ahead: int) -> None:
        self.processes = processes
        self.chunk = chunk
        self.total = total
        self.ahead = ahead
        import multiprocessing

        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=compare._signer_init, initargs=(pem,))
        self.pending: list[list[Future[list[str]]]] = []
        self.next_start = 0

    def _submit(self) -> None:
        start = self.next_start
        count = min(self.chunk, self.total - start)
        if count <= 0:
            return
        part = -(-count // self.processes)
        self.pending.append([self.pool.submit(sign_range, first, min(part, start + count - first))
                             for first in range(start, start + count, part)])
        self.next_start = start + count

    def chunks(self) -> Iterator[tuple[int, list[str]]]:
        """(first serial, bodies) chunk after chunk."""
        start = 0
        while start < self.total:
            while len(self.pending) < self.ahead and self.next_start < self.total:
                self._submit()
            futures = self.pending.pop(0)
            bodies = [body for future in futures for body in future.result()]
            # Keep the pool busy while this chunk is sent.
            while len(self.pending) < self.ahead and self.next_start < self.total:
                self._submit()
            yield start, bodies
            start += len(bodies)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


# -- the sender: keep-alive HTTP/1.1 over asyncio streams ------------------------------

@dataclass
class Sent:
    statuses: Counter[int] = field(default_factory=Counter)
    odd_bodies: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def _post_all(host: str, port: int, bodies: list[str], connections: int, rate: float,
                    sent: Sent) -> None:
    queue = iter(enumerate(bodies))
    started = time.monotonic()

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for index, body in queue:
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            data = body.encode()
            request = (f"POST {NOTIFY_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       "Content-Type: application/x-www-form-urlencoded\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data
            for attempt in range(5):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    begin = time.monotonic()
                    writer.write(request)
                    await writer.drain()
                    status, answer, close = await _response(reader)
                    sent.latencies_ms.append((time.monotonic() - begin) * 1000)
                    sent.statuses[status] += 1
                    if answer != b"success":
                        sent.odd_bodies += 1
                    if close:
                        writer.close()
                        writer = None
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if writer is not None:
                        writer.close()
                    writer = None
                    sent.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                sent.statuses[0] += 1  # never answered
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() == "close"


def post_all(url: str, bodies: list[str], connections: int, rate: float, sent: Sent) -> None:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    asyncio.run(_post_all(parts.hostname, parts.port, bodies, connections, rate, sent))


# -- database and processes ------------------------------------------------------------

@dataclass
class Sample:
    sent: int
    applied: int
    seconds: float
    web_rss: int
    worker_rss: int
    table_bytes: int
    index_bytes: dict[str, int]
    live: int
    dead: int
    pruned: int
    load: float

    @property
    def total_bytes(self) -> int:
        return self.table_bytes + sum(self.index_bytes.values())


def orders_create(user: Any, start: int, count: int) -> None:
    from shop.models import OrderInfo

    OrderInfo.objects.bulk_create(
        (OrderInfo(order_id=order_id(serial), user=user, total_amount=AMOUNT)
         for serial in range(start, start + count)),
        batch_size=5000,
    )


def applied_count() -> int:
    from payment.models import Payment

    return Payment.objects.count()


def table_sizes() -> tuple[int, dict[str, int], int, int]:
    """The events table's heap, each of its indexes (bytes), its live and dead tuples."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_table_size(%s::regclass)", [EVENTS_TABLE])
        heap = int(cursor.fetchone()[0])
        cursor.execute("SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
                       "FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1", [EVENTS_TABLE])
        indexes = {str(name): int(size) for name, size in cursor.fetchall()}
        cursor.execute("SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables "
                       "WHERE relname = %s", [EVENTS_TABLE])
        live, dead = cursor.fetchone()
    return heap, indexes, int(live), int(dead)


class PruneLog:
    """Events deleted by the retention job, read from the worker's log as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events = 0
        self.runs = 0

    def read(self) -> int:
        if not self.path.exists():
            return self.events
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            for line in log:
                if not line.endswith(b"\n"):
                    break
                self.offset += len(line)
                if b"payment records pruned" in line:
                    self.runs += 1
                    for word in line.split():
                        if word.startswith(b"events="):
                            self.events += int(word[len(b"events="):])
        return self.events


def sample(sent: int, started: float, web: ManagedProcess, worker: ManagedProcess,
           prunes: PruneLog) -> Sample:
    heap, indexes, live, dead = table_sizes()
    return Sample(sent=sent, applied=applied_count(), seconds=time.monotonic() - started,
                  web_rss=tree_rss(web.pid), worker_rss=tree_rss(worker.pid),
                  table_bytes=heap, index_bytes=indexes, live=live, dead=dead,
                  pruned=prunes.read(), load=os.getloadavg()[0])


def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def print_sample(s: Sample) -> None:
    print(f"  {s.sent:>9,} sent, {s.applied:>9,} applied at {s.seconds:6.0f} s: web "
          f"{mib(s.web_rss)} MiB, worker {mib(s.worker_rss)} MiB; events table "
          f"{mib(s.table_bytes)} MiB + indexes {mib(sum(s.index_bytes.values()))} MiB, "
          f"{s.live:,} live / {s.dead:,} dead tuples; {s.pruned:,} pruned; "
          f"load {s.load:.1f}", flush=True)


def table(samples: list[Sample]) -> str:
    lines = ["| events sent | applied | s | web RSS MiB | worker RSS MiB | events heap MiB | "
             "its indexes MiB | table + indexes MiB | live / dead tuples | pruned so far |",
             "| " + " | ".join(["---"] * 10) + " |"]
    for s in samples:
        cells = [f"{s.sent:,}", f"{s.applied:,}", f"{s.seconds:.0f}", mib(s.web_rss),
                 mib(s.worker_rss), mib(s.table_bytes), mib(sum(s.index_bytes.values())),
                 mib(s.total_bytes), f"{s.live:,} / {s.dead:,}", f"{s.pruned:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def index_table(chosen: list[Sample]) -> str:
    """Each index of the events table at the chosen samples."""
    names = sorted(chosen[-1].index_bytes)
    lines = ["| index | " + " | ".join(f"MiB at {s.sent:,}" for s in chosen) + " |",
             "| " + " | ".join(["---"] * (len(chosen) + 1)) + " |"]
    for name in names:
        lines.append(f"| {name.removeprefix(f'{EVENTS_TABLE}_')} | "
                     + " | ".join(mib(s.index_bytes.get(name, 0)) for s in chosen) + " |")
    return "\n".join(lines)


def exactly_once(events: int) -> list[str]:
    """Every notified order paid, each by one payment; the violations found."""
    from django.db.models import Count

    from payment.models import Payment
    from shop.models import OrderInfo

    problems = []
    payments = Payment.objects.filter(order__order_id__startswith=TAG)
    count = payments.count()
    trades = payments.values("trade_id").distinct().count()
    twice = (payments.values("order_id").annotate(n=Count("id")).filter(n__gt=1).count())
    paid = OrderInfo.objects.filter(order_id__startswith=TAG,
                                    status=OrderInfo.Status.UNSEND).count()
    print(f"  payments {count:,}, distinct trade numbers {trades:,}, orders paid twice or more "
          f"{twice}, orders paid {paid:,}, of {events:,} notified", flush=True)
    if count != events:
        problems.append(f"{count:,} payments for {events:,} notifications")
    if trades != count:
        problems.append(f"{count - trades} payments share a trade number")
    if twice:
        problems.append(f"{twice} orders paid more than once")
    if paid != events:
        problems.append(f"{paid:,} orders paid of {events:,} notified")
    return problems


def flat(samples: list[Sample], flat_from: int, tolerance: float,
         size_tolerance: float) -> list[str]:
    later = [s for s in samples if s.sent >= flat_from]
    if len(later) < 2:
        return [f"fewer than two samples from the {flat_from:,}th event"]
    base, problems = later[0], []
    for name in ("web", "worker"):
        first = getattr(base, f"{name}_rss")
        worst = max(later, key=lambda s: abs(getattr(s, f"{name}_rss") - first))
        change = (getattr(worst, f"{name}_rss") - first) / first
        last = getattr(later[-1], f"{name}_rss")
        end = (last - first) / first
        print(f"  {name} RSS {mib(first)} MiB at {base.sent:,} -> {mib(last)} "
              f"MiB at the end ({end:+.1%}); farthest {change:+.1%} at {worst.sent:,}", flush=True)
        if abs(change) > tolerance:
            problems.append(f"{name} RSS moved {change:+.1%} from the {base.sent:,}th event "
                            f"(at {worst.sent:,}), more than {tolerance:.0%}")
    largest = max(s.total_bytes for s in samples if s.sent <= base.sent)
    end_bytes = later[-1].total_bytes
    print(f"  events table + indexes: largest {mib(largest)} MiB up to the {base.sent:,}th event, "
          f"{mib(end_bytes)} MiB at the end", flush=True)
    if end_bytes > largest * size_tolerance:
        problems.append(f"events table + indexes grew to {mib(end_bytes)} MiB, more than "
                        f"{size_tolerance}x the {mib(largest)} MiB seen up to the "
                        f"{base.sent:,}th event")
    return problems


def reproduce(args: argparse.Namespace) -> str:
    return (f"cd {ROOT} && .venv/bin/python bench/soak.py --events {args.events} "
            f"--chunk {args.chunk} --sample-every {args.sample_every} --rate {args.rate:g} "
            f"--connections {args.connections} --db {args.db} --redis-port {args.redis_port} "
            f"--retention-interval {args.retention_interval:g}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000,
                        help="notifications signed, ordered and sent at a time")
    parser.add_argument("--sample-every", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=0,
                        help="notifications a second (0: as fast as the intake answers)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--signers", type=int, default=os.cpu_count() or 2,
                        help="signing processes")
    parser.add_argument("--db", default="soak_events", help="PostgreSQL database (made afresh)")
    parser.add_argument("--redis-port", type=int, default=6398,
                        help="port of the private redis-server started for the run")
    parser.add_argument("--retention-interval", type=float, default=60,
                        help="seconds between the retention job's runs (beat)")
    parser.add_argument("--flat-from", type=int, default=100_000,
                        help="RSS must stay flat from this event on (a fifth of a shorter run)")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--size-tolerance", type=float, default=1.5,
                        help="events table + indexes at the end / largest up to --flat-from")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--max-minutes", type=float, default=0,
                        help="stop sending after this long (0: never; SIGUSR1 stops too) and "
                        "check what was sent")
    args = parser.parse_args()
    if args.events < args.flat_from * 2:
        args.flat_from = args.events // 5
    return args


def main() -> int:
    args = parse_args()
    started_at = time.perf_counter()
    with Stack(db_name=args.db, RETURN_RATE="100000000/minute",
               PAYMENT_REFUSED_RATE="100000000/minute", RECONCILE_AFTER_SECONDS="3600",
               PAYMENT_EVENT_RETENTION_DAYS="0",
               PAYMENT_RETENTION_INTERVAL_SECONDS=str(args.retention_interval)) as stack:
        stack.env["CELERY_BEAT_SCHEDULE_FILENAME"] = str(stack.tmp / "celerybeat-schedule")
        stack.start_redis(args.redis_port)
        stack.prepare()
        stack.start_sandbox()
        pem = (stack.keys / "alipay_private_key.pem").read_bytes()
        from django.db import connections

        connections.close_all()
        signer = Signer(pem, args.signers, args.chunk, args.events, ahead=2)
        from shop.models import User

        user = User.objects.create(username="bench-soak")
        web = stack.start_procfile("web")
        compare.http_ready(f"{stack.web_url}/healthz")
        worker = stack.start_procfile("worker")
        worker.wait_log("ready.", timeout=90)
        beat = stack.start_procfile("beat")
        prunes = PruneLog(worker.log_path)
        print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}; {args.events:,} "
              f"notifications in chunks of {args.chunk:,}, {args.connections} connections, "
              f"rate {args.rate or 'unthrottled'}; logs in {stack.tmp}", flush=True)
        samples: list[Sample] = []
        sent = Sent()
        started = time.monotonic()
        next_mark = args.sample_every
        checked_signature = False
        stop = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *_: stop.set())
        stopped_at = 0
        try:
            for start, bodies in signer.chunks():
                if not checked_signature:
                    # The same signature as the tests' own helper.
                    params = dict(urllib.parse.parse_qsl(bodies[0]))
                    expected = sign_params({k: v for k, v in params.items() if k != "sign"},
                                           pem)["sign"]
                    if params["sign"] != expected:
                        raise RuntimeError("signature differs from tests/support.py sign_params")
                    checked_signature = True
                orders_create(user, start, len(bodies))
                post_all(stack.web_url, bodies, args.connections, args.rate, sent)
                done = start + len(bodies)
                if done >= next_mark or done == args.events:
                    samples.append(sample(done, started, web, worker, prunes))
                    print_sample(samples[-1])
                    next_mark += args.sample_every
                if beat.proc is not None and beat.proc.poll() is not None:
                    raise RuntimeError("beat exited")
                if done < args.events and (stop.is_set() or (
                        args.max_minutes and time.monotonic() - started > args.max_minutes * 60)):
                    print(f"  stopped after {done:,} of {args.events:,} events "
                          "(--max-minutes or SIGUSR1): checks on those", flush=True)
                    stopped_at = done
                    break
        finally:
            signer.close()
        wanted = args.events
        if stopped_at:
            args.events = stopped_at
        posted = time.monotonic() - started
        print(f"  posted {args.events:,} in {posted:.0f} s = {args.events / posted:.0f}/s; "
              f"status {dict(sent.statuses)}, {sent.odd_bodies} answers not `success`, "
              f"{sent.retries} retries; p50 {compare.percentile(sent.latencies_ms, 0.5):.0f} ms, "
              f"p99 {compare.percentile(sent.latencies_ms, 0.99):.0f} ms", flush=True)
        try:
            wait_for(lambda: applied_count() >= args.events, args.drain_timeout, 1.0)
        except Exception:  # noqa: BLE001  (reported below as a violation)
            pass
        # One more retention run after the last event was applied.
        runs = prunes.runs
        try:
            wait_for(lambda: prunes.read() is not None and prunes.runs > runs,
                     args.retention_interval * 2 + 30, 1.0)
        except Exception:  # noqa: BLE001
            print("  (no retention run after the drain)", flush=True)
        samples.append(sample(args.events, started, web, worker, prunes))
        print_sample(samples[-1])
        problems = exactly_once(args.events)
        if set(sent.statuses) != {200} or sent.odd_bodies:
            problems.append(f"answers {dict(sent.statuses)}, {sent.odd_bodies} not `success`")
        problems += flat(samples, args.flat_from, args.rss_tolerance, args.size_tolerance)
        print()
        print(table(samples))
        print()
        later = [s for s in samples if s.sent >= args.flat_from]
        print(index_table(list({s.sent: s for s in samples[:1] + later[:1] + samples[-1:]}
                               .values())))
        print()
        print(f"retention: beat's prune-payment-records every {args.retention_interval:g} s, "
              f"PAYMENT_EVENT_RETENTION_DAYS=0: {prunes.runs} runs logged deletions, "
              f"{prunes.events:,} events deleted")
        print(f"machine: {machine()}; total {time.perf_counter() - started_at:.0f} s; "
              f"load {os.getloadavg()[0]:.2f} at the end")
        if stopped_at:
            args.events = wanted
            problems.append(f"stopped after {stopped_at:,} of {wanted:,} events")
        print(f"reproduce: {reproduce(args)}")
        if problems:
            print("VIOLATIONS:")
            for problem in problems:
                print(f"- {problem}")
            return 1
        print("verdict: every order paid once; RSS flat; events table bounded")
        return 0


if __name__ == "__main__":
    sys.exit(main())
