"""Benchmark: this project beside the seed's synchronous baseline, in one table.

Reproduce:  .venv/bin/python bench/compare.py --baseline /work/shared/baseline
            [--duration 10] [--connections 16] [--threads 2] [--db-prefix P] [--memory]

One invocation runs the seed, the careful seed and the project, one at a time, under the
same wrk load (-t2 -c16 --latency by default), each on its own PostgreSQL database
(`bench_compare`, `seedbase_compare`, `seedcareful_compare`, each name behind --db-prefix),
the careful seed with its own `seedshop.py gateway`, the project with a private redis-server
and the sandbox. The careful seed is the seed with SEED_QUERY_URL set: each return confirmed
with the SDK's alipay.trade.query before it writes, as the project confirms it. The project's
web and worker commands are the `web:` and `worker:` lines of the Procfile, whatever they are.

1. PUT /payment/status/ first delivery: distinct return parameters of trades paid at the
   sandbox (notifications dropped, so the return is what pays); each request waits until
   applied, and every order hit must end paid. Seeds: their `prepare` paths and put.lua.
2. The same PUT once applied (a reload of the success page); the seed answers 500.
3. POST /payment/alipay/notify/ intake: distinct signed notifications, workers stopped.
4. The notifications stored by 3 (topped up to 10,000) applied by a started worker.
5. 2,000 stored return events, each needing a trade query, applied by a started worker.
6. Time-to-paid when idle: sequential first deliveries, one at a time.
7. Reconciliation of 10,000 stale unpaid orders (1,000 paid at the sandbox, nobody told),
   100 ms injected on every trade query: from the dispatch task until all are checked.
8. With --memory: RSS of the web and worker process trees after 10,000 and 100,000
   notifications processed.
"""
import argparse
import base64
import functools
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profiling  # noqa: E402
from bench.stack import ROOT, Stack, machine, percentile, tree_rss  # noqa: E402
from tests.support import (  # noqa: E402
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    sign_params,
    wait_for,
    wait_for_port,
)

# Database names, each behind --db-prefix so that runs beside each other do not share one.
PROJECT_DB = "bench_compare"
BASELINE_DB = "seedbase_compare"
CAREFUL_DB = "seedcareful_compare"
# The two seeds, by their column: the seed as written (client cached) and the careful one.
SEEDS = ("baseline", "careful")
REPLAY = Path(__file__).resolve().parent / "replay.lua"
NOTIFY_PATH = "/payment/alipay/notify/"
AMOUNT = Decimal("12.34")
CHINA = ZoneInfo("Asia/Shanghai")
# The seeds' paths are sized for this rate (their README measured 522-660 req/s here for
# the seed, 245-254 for the careful one).
BASELINE_RATE_GUESS = 1200
# Notifications are cheap to make (no sandbox payment): sized for this intake rate.
NOTIFY_RATE_GUESS = 1500
WARMUP_REQUESTS = 50
IDLE_REQUESTS = 100
# The probe measures at most PROBE_ORDERS / PROBE_SECONDS (1,000 req/s) before it runs out.
PROBE_ORDERS = 3000
MIN_RETURNS = 3000
PROBE_SECONDS = 3
DRAIN_NOTIFICATIONS = 10_000
QUEUED_RETURNS = 2_000
RECONCILE_ORDERS = 10_000
RECONCILE_PAID = 1_000
RECONCILE_LATENCY_MS = 100
MEMORY_CHUNK = 1_000
MEMORY_BACKLOG = 3_000
ROWS = {
    "first": "1. `PUT /payment/status/` first delivery",
    "reload": "2. `PUT /payment/status/` reload of an applied return",
    "notify": "3. `POST /payment/alipay/notify/` intake (workers stopped)",
    "drain_notify": "4. drain of the stored notifications (worker started)",
    "drain_returns": "5. drain of 2,000 stored returns (trade query each)",
    "idle": "6. time-to-paid when idle (one request at a time)",
    "reconcile": "7. reconciliation: 10,000 stale orders, 1,000 paid, 100 ms per query",
    "memory": "8. memory: RSS of web and worker trees",
}


def link_expires() -> datetime:
    """time_expire for a benchmark's pay link: well after the run."""
    return datetime.now(UTC) + timedelta(hours=1)


@dataclass
class Row:
    """One measure; a column per seed, the project, and the project's ratio to each seed."""

    title: str
    baseline: str = "-"
    careful: str = "-"
    project: str = "-"
    baseline_ratio: str = "-"
    careful_ratio: str = "-"


@dataclass
class Load:
    """What one wrk run reported, and what replay.lua counted per thread."""

    command: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: str = ""
    fresh: dict[int, int] = field(default_factory=dict)
    repeats: int = 0
    odd_bodies: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def hit(self, threads: int) -> list[int]:
        """Indices of the lines sent at least once (replay.lua stripes lines over threads)."""
        return sorted(tid + k * threads for tid, n in self.fresh.items() for k in range(n))

    def summary(self) -> str:
        text = f"{self.rps:.0f} req/s, p50 {ms(self.p50_ms)}, p99 {ms(self.p99_ms)}"
        if self.non_2xx:
            text += f"; {self.non_2xx} non-2xx"
        if self.socket_errors:
            text += f"; socket errors {self.socket_errors}"
        return text


@dataclass
class Profile:
    requests: int = 0


class Bench:
    """The state shared by the rows: options, the stack, the table and its notes."""

    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.rows = {key: Row(title) for key, title in ROWS.items()}
        self.notes: list[str] = []
        # Per seed (SEEDS): first-delivery req/s and idle time-to-paid median.
        self.seed_rps: dict[str, float] = {}
        self.seed_idle_ms: dict[str, float] = {}
        self.started = 0
        self.user: Any = None
        self.control: Any = None

    def note(self, text: str) -> None:
        print(f"  {text}", flush=True)
        self.notes.append(text)

    def ratios(self, key: str, project_rps: float, suffix: str = "") -> None:
        """Row `key`'s project / seed cells for a project rate: against each seed's first
        delivery (a seed that failed leaves "-")."""
        row = self.rows[key]
        for side in SEEDS:
            rps = self.seed_rps.get(side)
            setattr(row, f"{side}_ratio", f"{project_rps / rps:.2f}x{suffix}" if rps else "-")

    def lines_file(self, name: str, lines: list[str]) -> Path:
        path = self.stack.tmp / name
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    @contextmanager
    def profiled(self, side: str, roots: dict[str, int]) -> Iterator["Profile"]:
        """With --profile: CPU per request of each process tree (and of PostgreSQL) over the
        block, and with --spy py-spy on the Python trees; printed, and kept as a note."""
        profile = Profile()
        if not self.args.profile:
            yield profile
            return
        groups: dict[str, Callable[[], list[int]]] = {
            name: functools.partial(profiling.tree, pid) for name, pid in roots.items()}
        groups["postgres"] = lambda: profiling.named("postgres")
        groups["wrk"] = lambda: profiling.named("wrk")
        meter = profiling.CpuMeter(groups)
        spies = {name: (self.stack.tmp / f"spy-{side}-{name}.txt") for name in roots
                 if self.args.spy and name not in ("redis",)}
        running_spies = [profiling.spy_start(pid, spies[name], self.args.duration)
                         for name, pid in roots.items() if name in spies]
        meter.start()
        yield profile
        spent = meter.stop()
        for spy in running_spies:
            spy.wait(timeout=60)
        self.note(f"CPU {side}: {profiling.per_request_text(spent, profile.requests)} "
                  f"({profile.requests} requests)")
        for path in spies.values():
            if path.exists():
                print(profiling.spy_summary(path), flush=True)

    def wrk(self, url: str, duration: int, script: Path = REPLAY, **env: str) -> Load:
        return wrk_run(url, script, duration, self.args, **env)


# -- formatting -------------------------------------------------------------------------

def ms(value: float) -> str:
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def codes_text(codes: dict[int, int]) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))


def cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


# -- wrk --------------------------------------------------------------------------------

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_run(url: str, script: Path, duration: int, args: argparse.Namespace,
            **env: str) -> Load:
    """Run wrk once; env is what the Lua script reads. Killed if this process stops."""
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
            "--timeout", "30s", "--latency", "-s", str(script), url]
    env = {"WRK_THREADS": str(args.threads), **env}
    shown = " ".join([*(f"{key}={value}" for key, value in env.items()), *argv])
    print(f"  $ {shown}", flush=True)
    process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=duration + 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}: {output[-800:]}")
    return wrk_parse(output, shown)


def wrk_parse(output: str, command: str) -> Load:
    """wrk's summary (with --latency) and replay.lua's per-thread lines."""
    load = Load(command)
    if match := re.search(r"(\d+) requests in ([\d.]+)(\w+),", output):
        load.requests = int(match[1])
        load.seconds = float(match[2]) * UNIT_MS[match[3]] / 1000
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        load.rps = float(match[1])
    for percent, name in (("50", "p50_ms"), ("99", "p99_ms")):
        if match := re.search(rf"^\s+{percent}%\s+([\d.]+)(\w+)\s*$", output, re.MULTILINE):
            setattr(load, name, float(match[1]) * UNIT_MS[match[2]])
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        load.non_2xx = int(match[1])
    if match := re.search(r"Socket errors: (.+)", output):
        load.socket_errors = match[1].strip()
    pattern = r"^replay tid=(\d+) fresh=(\d+) repeats=(\d+) odd_bodies=(\d+) statuses=(\S*)"
    for match in re.finditer(pattern, output, re.MULTILINE):
        load.fresh[int(match[1])] = int(match[2])
        load.repeats += int(match[3])
        load.odd_bodies += int(match[4])
        for pair in filter(None, match[5].split(",")):
            code, count = pair.split("=")
            load.statuses[int(code)] = load.statuses.get(int(code), 0) + int(count)
    if not load.requests:
        raise RuntimeError(f"wrk reported no requests:\n{output[-1500:]}")
    return load


# -- signing (Alipay's scheme, the key loaded once per process) -------------------------

_signing_key: rsa.RSAPrivateKey | None = None


def _signer_init(pem: bytes) -> None:
    """Load the key once per signing process: loading costs ~50 ms, a signature ~1 ms."""
    global _signing_key
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    _signing_key = key


def signed_query(params: dict[str, str]) -> str:
    """The parameters with Alipay's RSA2 `sign` appended, urlencoded in their order.

    Signed like tests/support.py's sign_params: sorted k=v of the non-empty values, sign and
    sign_type left out.
    """
    assert _signing_key is not None
    kept = {key: value for key, value in params.items() if value != ""}
    message = "&".join(f"{k}={kept[k]}" for k in sorted(kept) if k not in ("sign", "sign_type"))
    signature = _signing_key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return urllib.parse.urlencode({**kept, "sign": base64.b64encode(signature).decode()})


def _sign_chunk(chunk: list[dict[str, str]]) -> list[str]:
    return [signed_query(params) for params in chunk]


def sign_all(pem: bytes, items: list[dict[str, str]]) -> list[str]:
    """Sign many parameter sets on every core; the signed queries in the same order."""
    from django.conf import settings
    from django.db import connections

    if settings.configured:  # forked children must not inherit this process's DB sockets
        connections.close_all()
    chunks = [items[i:i + 500] for i in range(0, len(items), 500)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(os.cpu_count() or 2, mp_context=context,
                             initializer=_signer_init, initargs=(pem,)) as pool:
        return [query for signed in pool.map(_sign_chunk, chunks) for query in signed]


# -- HTTP helpers -----------------------------------------------------------------------

def send_all(url: str, items: list[str], *, form: bool, threads: int = 16) -> dict[int, int]:
    """Send each item once from a thread pool: a form body POSTed to url, or a path PUT."""
    local = threading.local()

    def send(item: str) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.trust_env = False
        if form:
            response = local.session.post(url, data=item, timeout=60, headers={
                "Content-Type": "application/x-www-form-urlencoded"})
        else:
            response = local.session.put(f"{url}{item}", timeout=60)
        return int(response.status_code)

    with ThreadPoolExecutor(threads) as pool:
        return dict(Counter(pool.map(send, items)))


def sequential_puts(url: str, paths: list[str]) -> tuple[list[float], dict[int, int]]:
    """PUT each path one at a time; latencies in ms and status codes."""
    session = requests.Session()
    session.trust_env = False
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    for path in paths:
        start = time.perf_counter()
        response = session.put(f"{url}{path}", timeout=60)
        latencies.append((time.perf_counter() - start) * 1000)
        codes[response.status_code] += 1
    return latencies, dict(codes)


def idle_text(latencies: list[float], codes: dict[int, int]) -> str:
    text = (f"median {ms(statistics.median(latencies))}, p90 {ms(percentile(latencies, 0.9))}"
            f" ({len(latencies)} requests)")
    if set(codes) != {200}:
        text += f"; status {codes_text(codes)}"
    return text


def http_ready(url: str, timeout: float = 60) -> None:
    def answers() -> bool:
        try:
            return requests.get(url, timeout=2, proxies={"http": ""}).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, timeout, 0.2)


# -- the seeds -------------------------------------------------------------------------

class SeedShop:
    """The seed's synchronous design from the shared folder, on its own database and port.

    careful: SEED_QUERY_URL set, so that each return is confirmed with the SDK's
    alipay.trade.query against this seed's own `seedshop.py gateway` before it writes.
    """

    def __init__(self, folder: Path, stack: Stack, database: str, careful: bool = False) -> None:
        self.folder = folder.resolve()
        self.stack = stack
        self.database = database
        self.name = "careful-seed" if careful else "baseline"
        self.work = stack.tmp / f"{self.name}-work"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_port = free_port() if careful else None
        # seedshop.py configures its own settings: none of the project's environment.
        inherited = {key: value for key, value in os.environ.items()
                     if key not in ("DJANGO_SETTINGS_MODULE", "SEED_QUERY_URL")}
        self.env = {**inherited, "SEED_DB": database, "SEED_WORK": str(self.work),
                    "SEED_CACHED_CLIENT": "1", "no_proxy": "127.0.0.1,localhost"}
        if self.gateway_port:
            self.env["SEED_QUERY_URL"] = f"http://127.0.0.1:{self.gateway_port}/gateway.do"
        self.processes: list[ManagedProcess] = []

    def manage(self, *args: str) -> str:
        """Run `seedshop.py <args>` (migrate, prepare N, count); its output."""
        done = subprocess.run([sys.executable, str(self.folder / "seedshop.py"), *args],
                              env=self.env, cwd=self.work, capture_output=True, text=True,
                              check=False)
        if done.returncode:
            raise RuntimeError(f"seedshop.py {' '.join(args)}: {done.stderr[-800:]}")
        return done.stdout

    def prepare(self, count: int) -> list[str]:
        """A fresh database with `count` unpaid orders; their signed return paths."""
        self.work.mkdir(exist_ok=True)
        database_create(self.database)
        self.manage("migrate")
        # Keys, the table and path 0 as the seed writes them; the rest is signed here on
        # every core, since seedshop.py loads the key again for each path (~50 ms apiece).
        self.manage("prepare", "1")
        reference = (self.work / "paths.txt").read_text().splitlines()[0]
        paths = self._paths(reference, count)
        if paths[0] != reference:
            print("  seedshop.py writes other paths than expected: running its own prepare")
            self.manage("prepare", str(count))
            return (self.work / "paths.txt").read_text().splitlines()
        self._orders(reference, count)
        return paths

    def _paths(self, reference: str, count: int) -> list[str]:
        """Path i as seedshop.py's prepare writes it: path 0 with the ids' serial replaced."""
        path, _, query = reference.partition("?")
        template = dict(urllib.parse.parse_qsl(query))
        template.pop("sign")
        out_prefix, trade_prefix = template["out_trade_no"][:-12], template["trade_no"][:-12]
        items = [{**template, "out_trade_no": f"{out_prefix}{i:012d}",
                  "trade_no": f"{trade_prefix}{i:012d}"} for i in range(count)]
        pem = (self.work / "keys" / "alipay_private_key.pem").read_bytes()
        return [f"{path}?{signed}" for signed in sign_all(pem, items)]

    def _orders(self, reference: str, count: int) -> None:
        """Orders 1..count-1 beside the seed's order 0, in one statement."""
        import psycopg

        params = dict(urllib.parse.parse_qsl(reference.partition("?")[2]))
        prefix = params["out_trade_no"][:-12]
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={self.database}") as conn:
            conn.execute(
                "INSERT INTO seedapp_orderinfo (order_id, total_amount, status) "
                "SELECT %s || lpad(g::text, 12, '0'), %s, 1 FROM generate_series(1, %s) g",
                (prefix, Decimal(params["total_amount"]), count - 1),
            )

    def start(self) -> None:
        """gunicorn as the baseline's README runs it (2 sync workers), after the careful
        seed's gateway (which reads the keys that prepare() wrote)."""
        if self.gateway_port:
            self._start("gateway", [sys.executable, str(self.folder / "seedshop.py"),
                                    "gateway", str(self.gateway_port)])
            wait_for_port(self.gateway_port, timeout=60)
        self._start("gunicorn", [
            sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{self.port}",
            "--chdir", str(self.folder), "seedshop:application",
        ])
        wait_for_port(self.port, timeout=60)

    def _start(self, role: str, args: list[str]) -> None:
        process = ManagedProcess(f"{self.name}-{role}", args, self.env, self.stack.tmp).start()
        self.processes.append(process)
        self.stack.processes.append(process)  # stopped on exit even if stop() is never reached

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def counts(self) -> tuple[int, int]:
        """Payments, and orders the seed moved to UNSEND (`seedshop.py count`)."""
        payments, paid = self.manage("count").split()
        return int(payments), int(paid)


def database_create(name: str) -> None:
    base = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["dropdb", *base, "--if-exists", name], check=True)
    subprocess.run(["createdb", *base, name], check=True)


def baseline_rows(bench: Bench) -> None:
    """Rows 1, 2 and 6 for the seed as written (client cached)."""
    seed_rows(bench, SeedShop(Path(bench.args.baseline), bench.stack,
                              f"{bench.args.db_prefix}{BASELINE_DB}"), "baseline")


def careful_rows(bench: Bench) -> None:
    """Rows 1, 2 and 6 for the careful seed (a trade query per return, its own gateway)."""
    seed_rows(bench, SeedShop(Path(bench.args.baseline), bench.stack,
                              f"{bench.args.db_prefix}{CAREFUL_DB}", careful=True), "careful")


def seed_rows(bench: Bench, seed: SeedShop, side: str) -> None:
    """Rows 1, 2 and 6 for one seed: wrk with its put.lua, then one request at a time.

    Every request is a first delivery: the wrk run, the warm-up and the idle row each have
    their own prepared orders, and a run that outlasts its paths is marked.
    """
    args = bench.args
    count = max(2000, BASELINE_RATE_GUESS * args.duration)
    paths = seed.prepare(count + WARMUP_REQUESTS + IDLE_REQUESTS)
    load_paths, warmup = paths[:count], paths[count:count + WARMUP_REQUESTS]
    idle = paths[count + WARMUP_REQUESTS:]
    rows = bench.rows
    seed.start()
    try:
        # Both gunicorn workers connect and load keys (and the careful one reaches its gateway).
        _, warm = sequential_puts(seed.url, warmup)
        if set(warm) != {200}:
            raise RuntimeError(f"{seed.name} warm-up answered {codes_text(warm)} (logs in "
                               f"{bench.stack.tmp})")
        payments_before, paid_before = seed.counts()
        with bench.profiled(seed.name, {f"{p.name.split('-')[-1]}": p.pid
                                        for p in seed.processes}) as profile:
            load = bench.wrk(seed.url, args.duration, Path(args.baseline) / "put.lua",
                             PATHS_FILE=str(bench.lines_file(f"{seed.name}-paths.txt",
                                                             load_paths)))
            profile.requests = load.requests
        answered = load.requests - load.non_2xx
        payments_after, paid_after = seed.counts()
        payments, paid = payments_after - payments_before, paid_after - paid_before
        bench.seed_rps[side] = load.rps
        first = f"{load.summary()}; {paid_text(paid, answered)}"
        if payments != paid:
            first += f"; {payments} payments"
        if load.requests > count:
            first += f"; ran out of its {count} paths (repeats answer 500)"
        setattr(rows["first"], side, first)
        latencies, codes = sequential_puts(seed.url, idle)
        setattr(rows["idle"], side, idle_text(latencies, codes))
        bench.seed_idle_ms[side] = statistics.median(latencies)
        _, again = sequential_puts(seed.url, idle[:1])
        setattr(rows["reload"], side, f"answers {codes_text(again)} (repeat of a paid return)")
    finally:
        seed.stop()


def paid_text(paid: int, answered: int) -> str:
    if paid >= answered:
        return f"all {answered} paid" + (f" (+{paid - answered} in flight)" if paid > answered
                                          else "")
    return f"{answered - paid} of {answered} answered not paid"


# -- the project: data ------------------------------------------------------------------

def order_ids(tag: str, start: int, count: int) -> list[str]:
    return [f"{tag}{i:09d}" for i in range(start, start + count)]


def orders_create(bench: Bench, tag: str, count: int, start: int = 0) -> list[str]:
    """`count` UNPAID orders of AMOUNT, ids `<tag><serial>`."""
    from shop.models import OrderInfo

    ids = order_ids(tag, start, count)
    OrderInfo.objects.bulk_create(
        (OrderInfo(order_id=order_id, user=bench.user, total_amount=AMOUNT) for order_id in ids),
        batch_size=2000,
    )
    return ids


def paid_returns(bench: Bench, tag: str, count: int) -> tuple[list[str], list[str]]:
    """New orders paid at the sandbox; their ids and return paths as Alipay redirects them."""
    from payment import gateway

    ids = orders_create(bench, tag, count)
    start = time.perf_counter()

    def pay(order_id: str) -> str:
        url = gateway.page_pay_url(out_trade_no=order_id, total_amount=AMOUNT,
                                  subject=f"bench {order_id}",
                                  time_expire=link_expires())
        return_url = bench.control.pay(url)["return_url"]
        return f"/payment/status/?{urllib.parse.urlsplit(return_url).query}"

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(pay, ids))
    print(f"  paid {count} trades at the sandbox in {time.perf_counter() - start:.1f} s",
          flush=True)
    return ids, paths


def notifications(bench: Bench, ids: list[str]) -> list[str]:
    """One signed TRADE_SUCCESS notification (a form body) per order, as Alipay posts it."""
    start = time.perf_counter()
    now = datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S")
    items = [{
        "notify_time": now, "notify_type": "trade_status_sync", "notify_id": uuid.uuid4().hex,
        "app_id": APP_ID, "auth_app_id": APP_ID, "charset": "utf-8", "version": "1.0",
        "sign_type": "RSA2", "trade_no": f"2099{ord(order_id[0])}{order_id[1:]:0>20}",
        "out_trade_no": order_id, "buyer_id": "2088000000009999", "seller_id": SELLER_ID,
        "trade_status": "TRADE_SUCCESS", "total_amount": f"{AMOUNT:.2f}",
        "receipt_amount": f"{AMOUNT:.2f}", "buyer_pay_amount": f"{AMOUNT:.2f}",
        "subject": f"bench {order_id}", "gmt_create": now, "gmt_payment": now,
    } for order_id in ids]
    pem = (bench.stack.keys / "alipay_private_key.pem").read_bytes()
    bodies = sign_all(pem, items)
    # The same signature as the tests' own helper (which reloads the key each call).
    expected = sign_params(items[0], pem)["sign"]
    if dict(urllib.parse.parse_qsl(bodies[0]))["sign"] != expected:
        raise RuntimeError("notification signature differs from tests/support.py sign_params")
    print(f"  signed {len(bodies)} notifications in {time.perf_counter() - start:.1f} s",
          flush=True)
    return bodies


def paid_count(tag: str) -> int:
    from shop.models import OrderInfo

    return OrderInfo.objects.filter(order_id__startswith=tag,
                                    status=OrderInfo.Status.UNSEND).count()


def paid_among(ids: list[str]) -> int:
    from shop.models import OrderInfo

    return OrderInfo.objects.filter(order_id__in=ids, status=OrderInfo.Status.UNSEND).count()


def returns_received(ids: list[str]) -> list[str]:
    """The orders among ids whose return reached the web (a stored event).

    wrk counts a request as sent when its script made it; the last few, made as wrk
    stops, may never reach the server. The web stores before it waits: a second is enough.
    """
    from payment.models import PaymentEvent

    time.sleep(1)
    return sorted(set(PaymentEvent.objects.filter(source="return", out_trade_no__in=ids)
                      .values_list("out_trade_no", flat=True)))


def events_stored(source: str, tag: str) -> int:
    from payment.models import PaymentEvent

    return PaymentEvent.objects.filter(source=source, out_trade_no__startswith=tag).count()


def wait_count(count: Callable[[], int], expected: int, timeout: float) -> tuple[int, float]:
    """Poll count() until it reaches expected or timeout; the last count and seconds taken."""
    start = time.perf_counter()
    while True:
        value = count()
        elapsed = time.perf_counter() - start
        if value >= expected or elapsed > timeout:
            return value, elapsed
        time.sleep(0.25)


# -- the project: processes -------------------------------------------------------------

@contextmanager
def running(process: ManagedProcess) -> Iterator[ManagedProcess]:
    """Stop the process when the block ends, however it ends."""
    try:
        yield process
    finally:
        process.stop()


def start_web(bench: Bench, wait: str) -> ManagedProcess:
    """The Procfile's web line, answering PUT /payment/status/ after at most `wait` s."""
    bench.started += 1
    process = bench.stack.start_procfile("web", name=f"web-{bench.started}",
                                         RETURN_WAIT_SECONDS=wait)
    http_ready(f"{bench.stack.web_url}/healthz")
    return process


def start_worker(bench: Bench) -> ManagedProcess:
    """The Procfile's worker line, once it logs `ready.` (each start logs to its own file)."""
    bench.started += 1
    process = bench.stack.start_procfile("worker", name=f"worker-{bench.started}")
    process.wait_log("ready.", timeout=90)
    return process


def broker_flush(bench: Bench) -> None:
    """Drop messages a timed-out drain left behind (the private Redis: nobody else's)."""
    import redis

    redis.Redis.from_url(bench.stack.redis_url).flushdb()


# -- the project: rows ------------------------------------------------------------------

def project_return_rows(bench: Bench) -> None:
    """Rows 1, 2 and 6: web (waiting up to 10 s) and one worker, returns only."""
    args = bench.args
    url = bench.stack.web_url
    bench.control.set_faults(notify_drop=True)
    with running(start_web(bench, "10")) as web, running(start_worker(bench)) as worker:
        # The probe runs cold: twice its rate leaves room for the warm run.
        rate = probe_rate(bench) * 2
        # A floor, so that a probe slowed by a cold start cannot leave the run short of trades.
        need = max(int(rate * args.duration) + 100, MIN_RETURNS)
        count = min(need, args.max_returns)
        # Fewer paid trades than the rate needs: a shorter run, so that none repeats.
        duration = args.duration if count >= need else max(2, int(count / rate))
        ids, paths = paid_returns(bench, "R", count)
        idle_ids, idle_paths = paid_returns(bench, "I", IDLE_REQUESTS)
        sandbox = next(p for p in bench.stack.processes if p.name == "sandbox")
        redis = next(p for p in bench.stack.processes if p.name == "redis")
        with bench.profiled("project", {"web": web.pid, "worker": worker.pid,
                                        "sandbox": sandbox.pid, "redis": redis.pid}) as profile:
            load = bench.wrk(url, duration, MODE="put",
                             LINES_FILE=str(bench.lines_file("returns.txt", paths)))
            profile.requests = load.requests
        hit = load.hit(args.threads)
        sent_ids = [ids[i] for i in hit]
        hit_ids = returns_received(sent_ids)
        paid, _ = wait_count(lambda: paid_among(hit_ids), len(hit_ids), 60)
        first = f"{load.summary()}; {paid_text(paid, len(hit_ids))}"
        if len(sent_ids) > len(hit_ids):
            first += f" ({len(sent_ids) - len(hit_ids)} cut off by wrk's stop)"
        if set(load.statuses) - {200}:
            first += f"; status {codes_text(load.statuses)}"
        if load.repeats:
            first += f"; {load.repeats} repeated paths counted in req/s"
        if duration != args.duration:
            first += f"; {duration} s run ({count} paid trades)"
        bench.rows["first"].project = first
        # Reloads are cheaper than first deliveries: with repeats, not a fair figure.
        bench.ratios("first", load.rps, " (upper bound: repeats counted)" if load.repeats else "")
        received = set(hit_ids)
        reload_row(bench, [paths[i] for i in hit if ids[i] in received])
        idle_row(bench, idle_ids, idle_paths)


def probe_rate(bench: Bench) -> float:
    """A short first-delivery run (also the warm-up) to size the measured one."""
    ids, paths = paid_returns(bench, "P", PROBE_ORDERS)
    load = bench.wrk(bench.stack.web_url, PROBE_SECONDS, MODE="put",
                     LINES_FILE=str(bench.lines_file("probe.txt", paths)))
    hit_ids = returns_received([ids[i] for i in load.hit(bench.args.threads)])
    wait_count(lambda: paid_among(hit_ids), len(hit_ids), 60)  # idle again before measuring
    # Only fresh lines count: once the probe's trades are used up, wrk sends reloads.
    rate = sum(load.fresh.values()) / max(load.seconds, 0.1)
    bench.note(f"probe: {rate:.0f} req/s first delivery over {PROBE_SECONDS} s")
    return max(rate, 1.0)


def reload_row(bench: Bench, paths: list[str]) -> None:
    """Row 2: the applied returns again, cycling, for the whole duration."""
    load = bench.wrk(bench.stack.web_url, bench.args.duration, MODE="put", CYCLE="1",
                     LINES_FILE=str(bench.lines_file("reloads.txt", paths)))
    text = load.summary()
    if set(load.statuses) - {200}:
        text += f"; status {codes_text(load.statuses)}"
    bench.rows["reload"].project = f"{text} ({len(paths)} applied returns, cycled)"
    bench.ratios("reload", load.rps, " of the seed's first delivery")


def idle_row(bench: Bench, ids: list[str], paths: list[str]) -> None:
    """Row 6: first deliveries one at a time, the system otherwise idle."""
    latencies, codes = sequential_puts(bench.stack.web_url, paths)
    text = idle_text(latencies, codes)
    paid = paid_among(ids)
    if paid < len(ids):
        text += f"; {len(ids) - paid} of {len(ids)} not paid"
    bench.rows["idle"].project = text
    median = statistics.median(latencies)
    for side, seed_ms in bench.seed_idle_ms.items():
        setattr(bench.rows["idle"], f"{side}_ratio", f"{median / seed_ms:.2f}x (median)")


def notify_rows(bench: Bench) -> None:
    """Rows 3 and 4: notification intake with no worker, then a worker drains them."""
    args = bench.args
    count = max(DRAIN_NOTIFICATIONS + 2000,
                min(args.max_notifications, NOTIFY_RATE_GUESS * args.duration))
    ids = orders_create(bench, "N", count)
    bodies = notifications(bench, ids)
    with running(start_web(bench, "0")):
        load = bench.wrk(bench.stack.web_url, args.duration, MODE="notify",
                         EXPECT_BODY="success",
                         LINES_FILE=str(bench.lines_file("notifications.txt", bodies)))
        stored = events_stored("notify", "N")
        intake = (f"{load.summary()}; {load.odd_bodies} answers not `success`; "
                  f"{stored} stored")
        if load.repeats:
            intake += f"; {load.repeats} repeats (duplicates) counted in req/s"
        bench.rows["notify"].project = intake
        bench.ratios("notify", load.rps, " of the seed's first delivery")
        if stored < DRAIN_NOTIFICATIONS:
            stored = notify_top_up(bench, load, bodies, DRAIN_NOTIFICATIONS - stored)
    drain_row(bench, "drain_notify", "N", stored, per=DRAIN_NOTIFICATIONS)


def notify_top_up(bench: Bench, load: Load, bodies: list[str], missing: int) -> int:
    """POST notifications wrk did not send until enough are stored; the number stored."""
    sent = set(load.hit(bench.args.threads))
    unused = [body for index, body in enumerate(bodies) if index not in sent][:missing]
    codes = send_all(f"{bench.stack.web_url}{NOTIFY_PATH}", unused, form=True)
    stored = events_stored("notify", "N")
    bench.note(f"row 3 stored fewer than {DRAIN_NOTIFICATIONS}: topped up with {len(unused)} "
               f"more from 16 threads (status {codes_text(codes)}); {stored} stored")
    return stored


def drain_row(bench: Bench, key: str, tag: str, expected: int, per: int) -> None:
    """Start a worker and time until every stored order of `tag` is paid."""
    with running(start_worker(bench)):
        paid, seconds = wait_count(lambda: paid_count(tag), expected, bench.args.drain_timeout)
    rate = paid / seconds if seconds else 0.0
    if paid >= expected:
        text = (f"{expected} in {seconds:.1f} s = {rate:.0f} events/s; "
                f"{per / rate:.1f} s for {per:,}")
    else:
        broker_flush(bench)  # the rest must not run into the next row's worker
        estimate = f"{per / rate:.0f}" if rate else "-"
        text = (f"timed out after {seconds:.0f} s: {paid} of {expected} paid = {rate:.0f} "
                f"events/s; ~{estimate} s for {per:,} (est.)")
    bench.rows[key].project = text


def queued_returns_row(bench: Bench) -> None:
    """Row 5: returns stored through the web with no worker, then a worker applies them."""
    bench.control.set_faults(notify_drop=True)
    _, paths = paid_returns(bench, "Q", QUEUED_RETURNS)
    with running(start_web(bench, "0")):
        codes = send_all(bench.stack.web_url, paths, form=False)
    stored = events_stored("return", "Q")
    bench.note(f"row 5: {QUEUED_RETURNS} returns PUT with RETURN_WAIT_SECONDS=0, status "
               f"{codes_text(codes)}; {stored} stored")
    drain_row(bench, "drain_returns", "Q", QUEUED_RETURNS, per=QUEUED_RETURNS)


def reconcile_row(bench: Bench) -> None:
    """Row 7: the dispatch task and the Procfile's worker against 100 ms per trade query."""
    from django.utils import timezone

    from payment.models import PaymentAttempt

    control = bench.control
    control.set_faults(notify_drop=True, drop_return=True)
    ids = orders_create(bench, "C", RECONCILE_ORDERS)
    past = timezone.now() - timedelta(minutes=10)
    PaymentAttempt.objects.bulk_create(
        (PaymentAttempt(order_id=order_id, amount=AMOUNT, started_at=past,
                        last_started_at=past, next_check_at=past) for order_id in ids),
        batch_size=2000,
    )
    paid_ids = ids[::RECONCILE_ORDERS // RECONCILE_PAID]
    pay_at_sandbox(bench, paid_ids)
    control.set_faults(latency_ms=RECONCILE_LATENCY_MS, methods=["alipay.trade.query"])
    sandbox = next(p for p in bench.stack.processes if p.name == "sandbox")
    redis = next(p for p in bench.stack.processes if p.name == "redis")
    try:
        with running(start_worker(bench)) as worker, bench.profiled(
                "reconciliation", {"worker": worker.pid, "sandbox": sandbox.pid,
                                   "redis": redis.pid}) as profile:
            started_at = timezone.now()
            reconcile_dispatch()

            def checked() -> int:
                return PaymentAttempt.objects.filter(
                    order__order_id__startswith="C", last_checked_at__gte=started_at).count()

            # Done when every order was checked and every paid one applied.
            _, seconds = wait_count(lambda: checked() + paid_among(paid_ids),
                                    RECONCILE_ORDERS + len(paid_ids), bench.args.drain_timeout)
            checked_count, paid = checked(), paid_among(paid_ids)
            profile.requests = checked_count
    finally:
        control.set_faults(latency_ms=0, methods=[])
    text = (f"{checked_count} checks in {seconds:.1f} s = {checked_count / seconds:.0f} "
            f"checks/s; {paid} of {len(paid_ids)} paid found")
    if checked_count < RECONCILE_ORDERS or paid < len(paid_ids):
        broker_flush(bench)
        text = f"timed out: {text}"
    bench.rows["reconcile"].project = text


def pay_at_sandbox(bench: Bench, ids: list[str]) -> None:
    from payment import gateway

    def pay(order_id: str) -> None:
        bench.control.pay(gateway.page_pay_url(out_trade_no=order_id, total_amount=AMOUNT,
                                              subject=f"bench {order_id}",
                                  time_expire=link_expires()))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pay, ids))


def reconcile_dispatch() -> None:
    """What beat sends every RECONCILE_INTERVAL_SECONDS."""
    from payment.tasks import reconcile_dispatch_task

    reconcile_dispatch_task.delay()


def memory_row(bench: Bench) -> None:
    """Row 8: notifications fed to web + worker; RSS sampled at each processed mark."""
    marks = sorted(int(mark) for mark in bench.args.memory_at.split(","))
    samples: dict[int, tuple[int, int]] = {}
    with running(start_web(bench, "0")) as web, running(start_worker(bench)) as worker:
        made, last_progress, last_paid = 0, time.monotonic(), 0
        while len(samples) < len(marks):
            processed = paid_count("M")
            for mark in marks:
                if processed >= mark and mark not in samples:
                    samples[mark] = (tree_rss(web.pid), tree_rss(worker.pid))
                    bench.note(f"memory at {processed} processed: web "
                               f"{samples[mark][0] >> 20} MB, worker {samples[mark][1] >> 20} MB")
            if processed > last_paid:
                last_progress, last_paid = time.monotonic(), processed
            if time.monotonic() - last_progress > 180:
                raise RuntimeError(f"no progress for 180 s at {processed} processed")
            if made - processed < MEMORY_BACKLOG and made < marks[-1]:
                bodies = notifications(bench, orders_create(bench, "M", MEMORY_CHUNK, made))
                send_all(f"{bench.stack.web_url}{NOTIFY_PATH}", bodies, form=True, threads=8)
                made += MEMORY_CHUNK
            else:
                time.sleep(1)
    bench.rows["memory"].project = memory_text(marks, samples)


def memory_text(marks: list[int], samples: dict[int, tuple[int, int]]) -> str:
    first, last = samples[marks[0]], samples[marks[-1]]
    parts = []
    for index, name in enumerate(("web", "worker")):
        growth = (last[index] - first[index]) / first[index] * 100
        parts.append(f"{name} {first[index] >> 20} MB -> {last[index] >> 20} MB "
                     f"({growth:+.1f}%)")
    return f"after {marks[0]:,} / {marks[-1]:,} processed: " + "; ".join(parts)


# -- the run ----------------------------------------------------------------------------

def guarded(bench: Bench, side: str, keys: list[str], step: Callable[[Bench], None]) -> None:
    """Run one step; on an error print it and mark the cells it did not fill."""
    try:
        step(bench)
    except Exception as exc:  # noqa: BLE001  (one failed row must not stop the others)
        traceback.print_exc()
        message = f"failed: {type(exc).__name__}: {exc}"[:300]
        for key in keys:
            row = bench.rows[key]
            if getattr(row, side) == "-":
                setattr(row, side, message)


def project_prepare(bench: Bench) -> None:
    """Private Redis, a fresh `bench_compare` database, the sandbox, a user for the orders."""
    stack = bench.stack
    stack.start_redis()
    stack.prepare()
    stack.start_sandbox()
    bench.control = stack.sandbox_control()
    from shop.models import User

    bench.user = User.objects.create(username="bench-compare")


def table(bench: Bench) -> str:
    lines = ["| measure | baseline (seed, synchronous) | careful seed (seed + SDK trade query "
             "per return) | project | project / baseline | project / careful seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in bench.rows.values():
        cells = (row.title, row.baseline, row.careful, row.project, row.baseline_ratio,
                 row.careful_ratio)
        lines.append("| " + " | ".join(cell(text) for text in cells) + " |")
    return "\n".join(lines)


def load_average() -> str:
    """The 1-minute load average: others' work on a shared machine shows up here."""
    return f"load average {os.getloadavg()[0]:.2f}"


def reproduce(args: argparse.Namespace) -> str:
    command = (f"cd {ROOT} && .venv/bin/python bench/compare.py --baseline "
               f"{Path(args.baseline).resolve()} --duration {args.duration} "
               f"--connections {args.connections} --threads {args.threads}")
    if args.db_prefix:
        command += f" --db-prefix {args.db_prefix}"
    if args.memory:
        command += " --memory"
    if args.steps:
        command += f" --steps {args.steps}"
    if args.profile:
        command += " --profile" + (" --spy" if args.spy else "")
    return command


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--baseline", required=True, help="folder with seedshop.py, put.lua")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--db-prefix", default="",
                        help="put before the three database names (runs side by side)")
    parser.add_argument("--max-returns", type=int, default=5000,
                        help="cap on trades paid at the sandbox for row 1")
    parser.add_argument("--max-notifications", type=int, default=30000)
    parser.add_argument("--drain-timeout", type=float, default=60,
                        help="seconds rows 4, 5 and 7 wait before reporting a partial rate")
    parser.add_argument("--memory", action="store_true", help="run row 8 (long)")
    parser.add_argument("--profile", action="store_true",
                        help="CPU per request of every process during rows 1 and 7")
    parser.add_argument("--spy", action="store_true",
                        help="with --profile: py-spy on the Python processes too (slows them)")
    parser.add_argument("--steps", default="",
                        help="comma-separated sides of the run to keep, of baseline, careful, "
                             "returns, notify, drain_returns, reconcile (all by default)")
    parser.add_argument("--memory-at", default="10000,100000",
                        help="processed counts at which row 8 samples RSS")
    return parser.parse_args()


# The names --steps takes, of the steps below.
STEP_NAMES: dict[Callable[[Bench], None], str] = {
    project_prepare: "set-up", baseline_rows: "baseline", careful_rows: "careful",
    project_return_rows: "returns", notify_rows: "notify", queued_returns_row: "drain_returns",
    reconcile_row: "reconcile", memory_row: "memory",
}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    # The load comes from one address: the per-client throttles are counted but set high.
    with Stack(db_name=f"{args.db_prefix}{PROJECT_DB}", RETURN_WAIT_SECONDS="10",
               RETURN_RATE="100000000/minute", PAYMENT_REFUSED_RATE="100000000/minute",
               RECONCILE_AFTER_SECONDS="3600") as stack:  # no reconciliation before row 7 asks
        bench = Bench(args, stack)
        bench.rows["memory"].project = "not run (--memory)"
        steps: list[tuple[str, str, list[str], Callable[[Bench], None]]] = [
            ("project: set-up", "project", list(ROWS), project_prepare),
            ("baseline: rows 1, 2, 6", "baseline", ["first", "reload", "idle"],
             baseline_rows),
            ("careful seed: rows 1, 2, 6", "careful", ["first", "reload", "idle"],
             careful_rows),
            ("project: rows 1, 2, 6", "project", ["first", "reload", "idle"],
             project_return_rows),
            ("project: rows 3, 4", "project", ["notify", "drain_notify"], notify_rows),
            ("project: row 5", "project", ["drain_returns"], queued_returns_row),
            ("project: row 7", "project", ["reconcile"], reconcile_row),
        ]
        if args.memory:
            steps.append(("project: row 8", "project", ["memory"], memory_row))
        if args.steps:
            keep = {"set-up", *args.steps.split(",")}
            steps = [step for step in steps if STEP_NAMES[step[3]] in keep]
        print(f"machine: {machine()}; {load_average()}; wrk -t{args.threads} "
              f"-c{args.connections} -d{args.duration}s; logs in {stack.tmp}", flush=True)
        for title, side, keys, step in steps:
            print(f"== {title} ({load_average()})", flush=True)
            step_start = time.perf_counter()
            guarded(bench, side, keys, step)
            print(f"   ({time.perf_counter() - step_start:.0f} s)", flush=True)
    print()
    print(table(bench))
    print()
    print(f"machine: {machine()}; total {time.perf_counter() - started:.0f} s; "
          f"{load_average()} at the end (the machine is shared: read the ratios)")
    for note in bench.notes:
        print(f"- {note}")
    print(f"reproduce: {reproduce(args)}")


if __name__ == "__main__":
    main()
