"""Benchmark: the intake under an open-loop load at and past its capacity.

Reproduce:  .venv/bin/python bench/overload.py [--duration 8] [--rates 0.75,1,1.5,2]
            [--db ovl_overload] [--timeout 10] [--only notify|return] [--set NAME=VALUE]
            [--proxy]

The stack is compare.py's: the Procfile's `web:` and `worker:` lines (both running, as in
production), a private redis-server, the sandbox, a fresh PostgreSQL database. For each
endpoint:
1. capacity: a closed-loop run (CAPACITY_CONNECTIONS requests in flight, each sent as the
   previous answers) of fresh requests for --duration seconds, the workers applying them
   meanwhile: the answers per second;
2. an open-loop load at each multiple of that capacity (--rates) for --duration seconds:
   requests sent at fixed times whatever the answers (new connections opened when none is
   idle), each latency measured from its scheduled send time, so that a server that falls
   behind is not hidden by a client that waits for it (coordinated omission);
3. the check: every notification not answered `success` is sent again (as Alipay's retry
   would), every return not answered 200/202 is sent again (as a reload would), and then, in
   the database, every order whose notification or return was accepted is paid, with exactly
   one Payment. Exits non-zero when a payment is lost or applied twice.

With --proxy, the load goes through deploy/nginx.conf in a real nginx in front of the web (its
per-client rates lifted: the driver is one address), as production serves it: past the
requests in flight a replica takes, nginx refuses before Python sees the request.

Notifications are signed TRADE_SUCCESS forms for unpaid orders (compare.py's), returns are
trades paid at the sandbox with its notifications dropped (so the return is what pays; each
waits for the workers' trade query, up to RETURN_WAIT_SECONDS).
"""
import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import (  # noqa: E402
    NOTIFY_PATH,
    broker_flush,
    http_ready,
    notifications,
    orders_create,
    paid_returns,
    running,
    wait_count,
)
from bench.stack import ROOT, Stack, machine, percentile  # noqa: E402
from tests.support import NGINX, ManagedProcess, Proxy  # noqa: E402

DB_NAME = "ovl_overload"
STATUS_PATH = "/payment/status/"
CAPACITY_CONNECTIONS = 16
# Sized for a capacity up to this many answers per second, before it is measured.
NOTIFY_CAPACITY_GUESS = 1500
RETURN_CAPACITY_GUESS = 250
DRAIN_SECONDS = 120
RESEND_CONCURRENCY = 8


@dataclass
class Outcome:
    """One request: what came back, and when (ms after its scheduled send time)."""

    item: int
    status: int = 0  # 0: no answer
    body: bytes = b""
    retry_after: bool = False
    latency_ms: float = 0.0
    late_ms: float = 0.0  # how late this client itself started the request (its own lag)
    error: str = ""  # "timeout" or the exception's name


@dataclass
class Run:
    label: str
    offered: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    def achieved(self) -> float:
        answered = sum(1 for o in self.outcomes if o.status)
        return answered / self.seconds if self.seconds else 0.0


# -- a small HTTP/1.1 client on asyncio streams -----------------------------------------------

# A connection idle this long is not reused: the server ends idle keep-alive connections after
# 5 s (uvicorn's default), and a request written just as it does would fail (a browser would
# send it again on a new connection; this client counts only what the server did).
IDLE_REUSE_SECONDS = 2.0


class Client:
    """Keep-alive connections to one host:port; a new one whenever none is idle."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_REUSE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, target: str, body: bytes = b"",
                      content_type: str = "") -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self._connection()
        try:
            head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            if body or method in ("POST", "PUT"):
                head += f"Content-Length: {len(body)}\r\n"
            if content_type:
                head += f"Content-Type: {content_type}\r\n"
            writer.write(head.encode("latin-1") + b"\r\n" + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, headers, payload

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


Send = Callable[[Client, int], Awaitable[tuple[int, dict[str, str], bytes]]]


async def _one(client: Client, send: Send, item: int, scheduled: float,
               outcome: Outcome) -> None:
    outcome.late_ms = max(0.0, (time.perf_counter() - scheduled) * 1000)
    try:
        status, headers, body = await asyncio.wait_for(send(client, item), client.timeout)
        outcome.status, outcome.body = status, body
        outcome.retry_after = "retry-after" in headers
    except TimeoutError:
        outcome.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        outcome.error = type(exc).__name__
    outcome.latency_ms = (time.perf_counter() - scheduled) * 1000


async def open_loop(client: Client, send: Send, items: list[int], rate: float,
                    seconds: float) -> list[Outcome]:
    """Send items[k] at start + k / rate, whatever the answers; wait for every answer."""
    count = min(len(items), int(rate * seconds))
    outcomes = [Outcome(item) for item in items[:count]]
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for k, outcome in enumerate(outcomes):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(client, send, outcome.item, scheduled, outcome)))
    await asyncio.gather(*tasks)
    return outcomes


async def closed_loop(client: Client, send: Send, items: list[int], connections: int,
                      seconds: float) -> tuple[list[Outcome], float]:
    """`connections` senders, each sending its next item once the last is answered."""
    outcomes: list[Outcome] = []
    queue = iter(items)
    start = time.perf_counter()
    deadline = start + seconds

    async def sender() -> None:
        for item in queue:
            if time.perf_counter() >= deadline:
                return
            outcome = Outcome(item)
            outcomes.append(outcome)
            await _one(client, send, item, time.perf_counter(), outcome)

    await asyncio.gather(*(sender() for _ in range(connections)))
    return outcomes, time.perf_counter() - start


# -- reporting --------------------------------------------------------------------------------

def kind(outcome: Outcome, notify: bool) -> str:
    if outcome.error:
        return "timeout" if outcome.error == "timeout" else f"error {outcome.error}"
    if notify:
        if outcome.status == 200 and outcome.body == b"success":
            return "success"
        return f"{outcome.status} fail" if outcome.body == b"fail" else str(outcome.status)
    return str(outcome.status)


def accepted(outcome: Outcome, notify: bool) -> bool:
    """The answer promises the payment: `success`, or a return applied (200) or stored (202)."""
    if notify:
        return outcome.status == 200 and outcome.body == b"success"
    return outcome.status in (200, 202)


def ms(value: float) -> str:
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def run_line(run: Run, capacity: float, notify: bool) -> str:
    outcomes = run.outcomes
    latencies = [o.latency_ms for o in outcomes]
    kinds = Counter(kind(o, notify) for o in outcomes)
    shares = ", ".join(f"{name} {count / len(outcomes):.1%}"
                       for name, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
    refused = [o for o in outcomes if o.status in (429, 503)]
    with_retry_after = sum(1 for o in refused if o.retry_after)
    accepted_latencies = [o.latency_ms for o in outcomes if accepted(o, notify)]
    refused_latencies = [o.latency_ms for o in refused]
    goodput = len(accepted_latencies) / run.seconds
    text = (f"| {run.label} | {run.offered:.0f} ({run.offered / capacity:.2f}x) | "
            f"{run.achieved():.0f} | {goodput:.0f} ({goodput / capacity:.2f}x) | "
            f"{ms(percentile(latencies, 0.5))} | "
            f"{ms(percentile(latencies, 0.9))} | {ms(percentile(latencies, 0.99))} | "
            f"{ms(max(latencies))} | ")
    text += (ms(percentile(accepted_latencies, 0.99)) if accepted_latencies else "-") + " | "
    text += (ms(percentile(refused_latencies, 0.99)) if refused_latencies else "-") + " | "
    text += ms(percentile([o.late_ms for o in outcomes], 0.99)) + " | "
    text += f"{shares}"
    if refused:
        text += f" (Retry-After on {with_retry_after} of {len(refused)})"
    return text + " |"


TABLE_HEAD = ("| rate | offered req/s (x capacity) | answered req/s | accepted req/s (x capacity) "
              "| p50 | p90 | p99 | max | p99 accepted | p99 refused | p99 of the client's own "
              "lag | shares |\n" + "| --- " * 12 + "|")


# -- the database checks ----------------------------------------------------------------------

def payments_by_order(ids: list[str]) -> tuple[Counter[str], set[str]]:
    """Payments per order among ids, and the ids of those orders that are paid."""
    from payment.models import Payment
    from shop.models import OrderInfo

    per_order = Counter(Payment.objects.filter(order_id__in=ids)
                        .values_list("order_id", flat=True))
    paid = set(OrderInfo.objects.filter(order_id__in=ids)
               .exclude(status=OrderInfo.Status.UNPAID).values_list("order_id", flat=True))
    return per_order, paid


def events_waiting() -> int:
    from payment.models import EventState, PaymentEvent

    return PaymentEvent.objects.filter(state=EventState.RECEIVED).count()


def drain() -> float:
    """Wait until the workers have settled every stored event; seconds taken."""
    left, seconds = wait_count(lambda: -events_waiting(), 0, DRAIN_SECONDS)
    if left < 0:
        print(f"  {-left} events still waiting after {seconds:.0f} s", flush=True)
    return seconds


async def _bounded(client: Client, send: Send, outcomes: list[Outcome], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(outcome: Outcome) -> None:
        async with semaphore:
            await _one(client, send, outcome.item, time.perf_counter(), outcome)

    await asyncio.gather(*(one(o) for o in outcomes))


async def resend(client: Client, send: Send, items: list[int], notify: bool,
                 rounds: int = 5) -> tuple[list[int], Counter[str]]:
    """Send items again (a few at a time, as retries arrive) until each is accepted, at most
    `rounds` times with a pause between; the items never accepted and the last answers."""
    answers: Counter[str] = Counter()
    todo = list(items)
    for attempt in range(rounds):
        if not todo:
            break
        if attempt:
            await asyncio.sleep(2)
        outcomes = [Outcome(item) for item in todo]
        await _bounded(client, send, outcomes, RESEND_CONCURRENCY)
        answers = Counter(kind(o, notify) for o in outcomes)
        todo = [o.item for o in outcomes if not accepted(o, notify)]
    return todo, answers


# -- the two endpoints ------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.control: Any = None
        self.user: Any = None
        self.started = 0
        self.failures: list[str] = []
        self.tables: list[str] = []
        self.proxy: Proxy | None = None

    def web(self) -> ManagedProcess:
        self.started += 1
        process = self.stack.start_procfile("web", name=f"web-{self.started}")
        http_ready(f"{self.stack.web_url}/healthz")
        return process

    def worker(self) -> ManagedProcess:
        self.started += 1
        process = self.stack.start_procfile("worker", name=f"worker-{self.started}")
        process.wait_log("ready.", timeout=90)
        return process

    def client(self) -> Client:
        port = self.proxy.port if self.proxy else self.stack.web_port
        return Client("127.0.0.1", port, self.args.timeout)

    def proxy_start(self) -> None:
        """deploy/nginx.conf in front of the web, its per-client rates out of the way."""
        if NGINX is None:
            sys.exit("--proxy needs nginx (apt-get install nginx-light)")
        directory = self.stack.tmp / "nginx"
        self.proxy = Proxy(directory, self.stack.web_port, tls=False,
                           changes={"rate=5r/s": "rate=1000000r/s",
                                    "rate=100r/s": "rate=1000000r/s"})
        self.stack.processes.append(self.proxy.start(self.stack.tmp))


def sized(capacity_guess: int, args: argparse.Namespace) -> int:
    rates = [float(r) for r in args.rates.split(",")]
    return int(capacity_guess * (1 + sum(rates)) * args.duration) + 200


async def measure(bench: Bench, name: str, ids: list[str], send: Send, notify: bool) -> None:
    """Capacity, the open-loop runs, the re-sends and the database check for one endpoint."""
    args = bench.args
    client = bench.client()
    items = list(range(len(ids)))
    # Warm-up: a few requests one at a time (connections, the pool, the keys).
    for item in items[:20]:
        await _one(client, send, item, time.perf_counter(), Outcome(item))
    items = items[20:]
    # As long as each rate's run, the workers applying meanwhile: a short burst measured
    # the web alone (the workers' share of the CPU came after it) and overstated the rate
    # the stack sustains by up to 1.7x.
    outcomes, seconds = await closed_loop(client, send, items, CAPACITY_CONNECTIONS,
                                          args.duration)
    items = items[len(outcomes):]
    good = sum(1 for o in outcomes if accepted(o, notify))
    capacity = good / seconds
    latencies = [o.latency_ms for o in outcomes]
    print(f"  capacity ({CAPACITY_CONNECTIONS} in flight, closed loop, {seconds:.1f} s): "
          f"{capacity:.0f} req/s accepted, p50 {ms(percentile(latencies, 0.5))}, "
          f"p99 {ms(percentile(latencies, 0.99))}, "
          f"{dict(Counter(kind(o, notify) for o in outcomes))}", flush=True)
    every = list(outcomes)
    runs: list[Run] = []
    for multiple in (float(r) for r in args.rates.split(",")):
        await asyncio.to_thread(drain)  # each rate starts with the workers idle
        rate = capacity * multiple
        started = time.perf_counter()
        run_outcomes = await open_loop(client, send, items, rate, args.duration)
        run = Run(f"{multiple:g}x", rate, args.duration, run_outcomes)
        items = items[len(run_outcomes):]
        if len(run_outcomes) < int(rate * args.duration):
            print(f"  ran out of prepared requests at {multiple:g}x", flush=True)
        runs.append(run)
        every += run_outcomes
        print(f"  {multiple:g}x: {len(run_outcomes)} sent in "
              f"{time.perf_counter() - started:.1f} s, {client.opened} connections opened so "
              f"far", flush=True)
        print("  " + run_line(run, capacity, notify), flush=True)
    via = " through nginx (deploy/nginx.conf)" if bench.proxy else ""
    table = [f"{name}{via}: capacity {capacity:.0f} req/s (closed loop, "
             f"{CAPACITY_CONNECTIONS} in flight); {args.duration} s per rate; "
             f"client time-out {args.timeout:g} s", TABLE_HEAD]
    table += [run_line(run, capacity, notify) for run in runs]
    # Alipay's retries (a notification not answered `success`), or a reload of the page.
    await asyncio.to_thread(drain)
    refused = sorted({o.item for o in every if not accepted(o, notify)})
    print(f"  sending again the {len(refused)} not accepted", flush=True)
    never, answers = await resend(client, send, refused, notify)
    client.close()
    await asyncio.to_thread(drain)
    check_ids = [ids[o.item] for o in every]
    per_order, paid = await asyncio.to_thread(payments_by_order, check_ids)
    expected = {ids[o.item] for o in every if accepted(o, notify)} | {
        ids[item] for item in refused if item not in never}
    lost = sorted(order_id for order_id in expected if order_id not in paid
                  or per_order[order_id] == 0)
    twice = sorted(order_id for order_id, count in per_order.items() if count > 1)
    check = (f"check: {len(every)} sent, {len(refused)} not accepted and sent again "
             f"(last answers {dict(answers)}), {len(never)} never accepted; "
             f"{len(expected)} orders accepted: {len(expected) - len(lost)} paid with one "
             f"payment, {len(lost)} lost, {len(twice)} with more than one payment")
    print(f"  {check}", flush=True)
    table.append("")
    table.append(check)
    bench.tables.append("\n".join(table))
    if lost:
        bench.failures.append(f"{name}: {len(lost)} accepted but not paid, e.g. {lost[:3]}")
    if twice:
        bench.failures.append(f"{name}: {len(twice)} paid twice, e.g. {twice[:3]}")
    if never:
        bench.failures.append(f"{name}: {len(never)} never accepted after 5 re-sends")


def run_loop(main: Awaitable[None]) -> None:
    """On uvloop, as the web runs: the driver shares the machine's two cores with it."""
    import uvloop

    uvloop.run(main)  # type: ignore[arg-type]


def notify_rows(bench: Bench) -> None:
    count = sized(bench.args.notify_guess, bench.args)
    ids = orders_create(bench, "N", count)  # type: ignore[arg-type]
    bodies = [body.encode() for body in notifications(bench, ids)]  # type: ignore[arg-type]

    async def send(client: Client, item: int) -> tuple[int, dict[str, str], bytes]:
        return await client.request("POST", NOTIFY_PATH, bodies[item],
                                    "application/x-www-form-urlencoded")

    with running(bench.web()), running(bench.worker()):
        run_loop(measure(bench, "POST /payment/alipay/notify/", ids, send, notify=True))


def return_rows(bench: Bench) -> None:
    bench.control.set_faults(notify_drop=True)
    count = min(sized(bench.args.return_guess, bench.args), bench.args.max_returns)
    ids, paths = paid_returns(bench, "R", count)  # type: ignore[arg-type]

    async def send(client: Client, item: int) -> tuple[int, dict[str, str], bytes]:
        return await client.request("PUT", paths[item])

    with running(bench.web()), running(bench.worker()):
        run_loop(measure(bench, "PUT /payment/status/ (first delivery)", ids, send,
                         notify=False))


def reproduce(args: argparse.Namespace) -> str:
    command = (f"cd {ROOT} && .venv/bin/python bench/overload.py --duration {args.duration} "
               f"--rates {args.rates} --db {args.db} --timeout {args.timeout:g}")
    if args.only:
        command += f" --only {args.only}"
    command += f" --notify-guess {args.notify_guess} --return-guess {args.return_guess}"
    command += "".join(f" --set {setting}" for setting in args.set)
    if args.proxy:
        command += " --proxy"
    return command


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds at each rate")
    parser.add_argument("--rates", default="0.75,1,1.5,2", help="multiples of the capacity")
    parser.add_argument("--db", default=DB_NAME, help="PostgreSQL database (made afresh)")
    parser.add_argument("--timeout", type=float, default=10,
                        help="seconds a request may take before the client gives up")
    parser.add_argument("--only", choices=("notify", "return"), default="")
    parser.add_argument("--notify-guess", type=int, default=NOTIFY_CAPACITY_GUESS,
                        help="notifications per second to prepare for (signed beforehand)")
    parser.add_argument("--return-guess", type=int, default=RETURN_CAPACITY_GUESS,
                        help="returns per second to prepare for (trades paid beforehand)")
    parser.add_argument("--max-returns", type=int, default=12000,
                        help="cap on the trades paid at the sandbox")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every process started (e.g. INTAKE_MAX_ACTIVE=0)")
    parser.add_argument("--proxy", action="store_true",
                        help="through deploy/nginx.conf in a real nginx, as production serves")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    # One client address: the per-client throttles are set out of the way.
    with Stack(db_name=args.db, RETURN_RATE="100000000/minute",
               PAYMENT_REFUSED_RATE="100000000/minute",
               RECONCILE_AFTER_SECONDS="3600",
               **dict(setting.split("=", 1) for setting in args.set)) as stack:
        bench = Bench(args, stack)
        stack.start_redis()
        stack.prepare()
        stack.start_sandbox()
        bench.control = stack.sandbox_control()
        from shop.models import User

        bench.user = User.objects.create(username="bench-overload")
        if args.proxy:
            bench.proxy_start()
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}; logs in "
              f"{stack.tmp}", flush=True)
        if args.only != "return":
            print("== notifications", flush=True)
            notify_rows(bench)
            broker_flush(bench)  # type: ignore[arg-type]
        if args.only != "notify":
            print("== returns", flush=True)
            return_rows(bench)
    print()
    for table in bench.tables:
        print(table)
        print()
    print(f"machine: {machine()}; total {time.perf_counter() - started:.0f} s; load average "
          f"{os.getloadavg()[0]:.2f} at the end (a shared machine: read the ratios)")
    print(f"reproduce: {reproduce(args)}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    sys.exit(1 if bench.failures else 0)


if __name__ == "__main__":
    main()
