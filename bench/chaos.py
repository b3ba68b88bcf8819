"""A chaos run: mixed traffic against the whole stack while a seeded schedule injects faults,
then the books checked against the sandbox.

    .venv/bin/python bench/chaos.py --seconds 120 --seed 1

Every process is real and runs from this checkout: a private PostgreSQL cluster (initdb'd in a
temporary directory on a free port, restarted as a fault), a private redis-server, the
sandbox (its notification retries compressed by --time-factor), a fault proxy in front of its
gateway, the Procfile's web, two workers and beat. Buyers order and pay by both channels,
send returns before and after the notifications (or never), leave orders to expire, cancel;
staff refund through the API and the admin's form; a bill run closes the run. See
bench/README.md ("Chaos run") for the faults and the invariants. Exits 1 on any violation.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alipay_sandbox.client import SandboxControl  # noqa: E402
from alipay_sandbox.testing import SandboxProcess, start_sandbox  # noqa: E402
from bench.stack import Stack  # noqa: E402
from tests.support import (  # noqa: E402
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    wait_for_port,
)

PG_BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
BEIJING = timezone(timedelta(hours=8))
SKU_PRICE = Decimal("10.00")

# The run's own short settings (names from config/settings.py): expiry, reconciliation, the
# sweeper and the retry policy at seconds instead of minutes, so that a two-minute run sees
# each of them work many times. The project's defaults are not changed.
RUN_SETTINGS = {
    "ORDER_PAY_TIMEOUT_SECONDS": "15",
    "ORDER_EXPIRE_INTERVAL_SECONDS": "2",
    "RECONCILE_AFTER_SECONDS": "4",
    "RECONCILE_INTERVAL_SECONDS": "2",
    "PAYMENT_SWEEP_INTERVAL_SECONDS": "2",
    "PAYMENT_CLAIM_LEASE_SECONDS": "5",
    "RECONCILE_CLAIM_LEASE_SECONDS": "10",
    "REFUND_CONFIRM_DELAY_SECONDS": "1",
    "PAYMENT_RETRY_BACKOFF": "0.5",
    "PAYMENT_RETRY_BACKOFF_MAX": "5",
    "ALIPAY_TIMEOUT_SECONDS": "2",
    "RETURN_WAIT_SECONDS": "3",
    "CELERY_BEAT_LOCK_TIMEOUT": "5",
    "CELERY_BEAT_MAX_LOOP_INTERVAL": "1",
    "RETURN_RATE": "100000/minute",
    "PAYMENT_REFUSED_RATE": "100000/minute",
    "ORDER_MAX_UNPAID": "0",
    "WEB_CONCURRENCY": "2",
    "WORKER_CONCURRENCY": "2",
    "LOG_LEVEL": "INFO",
}
# How long after a fault an event or refund may still wait (seconds): the longest backoff, a
# claim lease, two sweeps and a refund confirmation, plus slack for a loaded machine.
HORIZON_SLACK = 10.0
# After PostgreSQL answers again, the web's pools may hold dead connections for a moment.
DB_AWAY_SLACK = 5.0

# Two lanes, each its own seeded schedule, so that a gateway fault may meet a process fault.
PROCESS_FAULTS = [
    "worker_sigkill", "worker_sigterm", "web_child_sigkill", "web_sigterm", "beat_kill",
    "postgres_restart_fast", "postgres_restart_immediate", "redis_restart", "redis_flush",
    "broker_away",
]
GATEWAY_FAULTS = ["gateway_slow", "gateway_5xx", "gateway_reset", "gateway_late",
                  "notify_dup_reorder"]
FAULT_KINDS = PROCESS_FAULTS + GATEWAY_FAULTS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


# -- faults ------------------------------------------------------------------------------------

class FaultLog:
    """What was injected, when, and when the database was away."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.timeline: list[tuple[float, str, str]] = []
        self.db_away: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            self.timeline.append((time.time(), kind, detail))
        log(f"fault {kind} {detail}".rstrip())

    def database_away(self, start: float, end: float) -> None:
        with self.lock:
            self.db_away.append((start, end))

    def while_database_away(self, at: float) -> bool:
        return any(start <= at <= end + DB_AWAY_SLACK for start, end in self.db_away)


class FaultProxy:
    """A TCP relay in front of the sandbox's gateway with a mode for every new chunk:
    pass, slow (a delay before each request), reset (RST instead of the request or of its
    answer: Alipay may have done it), late (the answer held past our time-out)."""

    def __init__(self, upstream_port: int, seed: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode = "pass"
        self.delay = 0.0
        self.late = 0.0
        self._random = random.Random(seed)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str, delay: float = 0.0, late: float = 0.0) -> None:
        self.mode, self.delay, self.late = mode, delay, late

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
        self._answers(upstream, client)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                if self.mode == "reset" and self._random.random() < 0.5:
                    _reset(client)
                    _close(upstream)
                    return
                if self.mode == "slow":
                    time.sleep(self.delay)
                upstream.sendall(data)
        except OSError:
            pass
        _close(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                if self.mode == "reset":
                    _reset(client)
                    _close(upstream)
                    return
                if self.mode == "late":
                    time.sleep(self.late)
                client.sendall(data)
        except OSError:
            pass
        _close(client)

    def close(self) -> None:
        self._listener.close()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class PrivatePostgres:
    """A PostgreSQL cluster of this run's own: initdb'd into a temporary directory, on a free
    port, run as the `postgres` OS user when this runs as root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/chaos"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.dir} -c max_connections=200 "
                   # fsync only matters when the machine itself crashes. Never
                   # synchronous_commit=off: an immediate restart would lose commits already
                   # acknowledged, which no real PostgreSQL does.
                   "-c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w",
                  "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "chaos")

    def restart(self, mode: str) -> None:
        # -l again: the new postmaster must not hold our pipes open (pg_ctl would never end).
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-m",
                  mode, "-w", "-t", "60", "restart")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                      check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the stack ---------------------------------------------------------------------------------

class ChaosStack(Stack):
    """bench/stack.py's stack on a private PostgreSQL and a private Redis on a given port."""

    def __init__(self, postgres: PrivatePostgres, redis_port: int) -> None:
        self.redis_port = redis_port
        super().__init__(db_name="chaos", DATABASE_URL=postgres.url,
                         CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
                         DJANGO_SETTINGS_MODULE="config.settings", **RUN_SETTINGS)
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.redis: ManagedProcess | None = None
        self.sandbox: SandboxProcess | None = None

    def start_redis(self, port: int | None = None) -> None:
        """The run's Redis on its own port (`port` must be that port or None): started
        again after each Redis fault, so the process is kept to stop it."""
        assert port in (None, self.redis_port)
        self.redis = self._start("redis", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.tmp),
        ])
        wait_for_port(self.redis_port)

    def prepare(self) -> None:
        from payment.gateway.keys import write_keys

        self.keys.mkdir()
        write_keys(self.keys, sandbox=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env,
                       check=True)
        import django

        django.setup()

    def start_chaos_sandbox(self, time_factor: float) -> None:
        self.sandbox = start_sandbox(
            self.keys, self.tmp / "sandbox.sqlite3", "--empty-param-rate", "0.1",
            port=self.sandbox_port, time_factor=time_factor, app_id=APP_ID,
            seller_id=SELLER_ID, log_dir=self.tmp, env=self.env,
        )
        self.processes.append(self.sandbox)


def process_running(process: ManagedProcess) -> bool:
    return process.proc is not None and process.proc.poll() is None


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# -- traffic -----------------------------------------------------------------------------------

@dataclass
class OrderRecord:
    order_id: str
    buyer: str
    plan: str
    channel: str
    total: Decimal
    trade_no: str = ""
    answers: list[tuple[int, str]] = field(default_factory=list)  # (status, summary)
    final: dict[str, Any] | None = None  # the buyer's last answer about the order
    final_kind: str = ""  # "return" (200/409 from the return) or "status" (the order's status)


class Http:
    """requests with retries on connection errors and 5xx, as a storefront retries."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, method: str, path: str, tries: int = 8, ok: tuple[int, ...] = (),
             **kwargs: Any) -> requests.Response | None:
        kwargs.setdefault("timeout", 15)
        last: requests.Response | None = None
        for attempt in range(tries):
            try:
                last = self.session.request(method, self.base_url + path, **kwargs)
            except requests.RequestException:
                last = None
            else:
                if last.status_code < 500 or last.status_code in ok:
                    return last
            time.sleep(min(0.3 * 2 ** attempt, 4.0))
        return last


class Traffic:
    def __init__(self, run: ChaosRun) -> None:
        self.run = run
        self.records: dict[str, OrderRecord] = {}
        self.paid: list[str] = []
        self.lock = threading.Lock()
        self.pay_lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.refund_counts: collections.Counter[str] = collections.Counter()

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    # buyers

    def buyer_loop(self, index: int, token: str, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        http = Http(self.run.web_url)
        http.session.headers["Authorization"] = f"Token {token}"
        plans = ["return_first", "return_after", "return_repeat", "notify_only", "silent",
                 "unpaid", "cancel", "cancel_race"]
        weights = [4, 4, 2, 3, 2, 2, 1, 1]
        while not stop.is_set():
            plan = rng.choices(plans, weights)[0]
            try:
                self.buyer_order(http, f"buyer{index}", plan, rng)
            except Exception as exc:  # a buyer gives up on this order, not on shopping
                self.count(f"buyer error {type(exc).__name__}")
            stop.wait(rng.uniform(0.1, 0.6))

    def buyer_order(self, http: Http, buyer: str, plan: str, rng: random.Random) -> None:
        channel = rng.choice(["page", "wap"])
        count = rng.randint(1, 3)
        response = http.call("POST", "/orders/", json={
            "items": [{"sku_id": self.run.sku_id, "count": count}]})
        if response is None or response.status_code != 201:
            self.count("order not created")
            return
        order = response.json()
        record = OrderRecord(order["order_id"], buyer, plan, channel,
                             Decimal(str(order["total_amount"])))
        with self.lock:
            self.records[record.order_id] = record
        self.count(f"plan {plan}")
        response = http.call("GET", f"/orders/{record.order_id}/payment/?channel={channel}")
        if response is None or response.status_code != 200:
            self.count("no pay link")
            return
        pay_url = response.json()["alipay_url"]
        if plan == "unpaid":
            return
        if plan in ("cancel", "cancel_race"):
            self.buyer_cancel(http, record, pay_url, race=plan == "cancel_race")
            return
        paid = self.pay(pay_url, silent=plan == "silent")
        if paid is None:
            self.count("pay refused")
            return
        record.trade_no = paid["trade_no"]
        query = urllib.parse.urlsplit(paid["return_url"]).query
        if plan in ("silent", "notify_only"):
            self.buyer_status(http, record)
            return
        if plan == "return_after":
            self.notifications_settled(record.order_id, timeout=4.0)
        repeats = rng.randint(2, 3) if plan == "return_repeat" else 1
        for _ in range(repeats):
            self.buyer_return(http, record, query)
        if record.final is None:
            self.buyer_status(http, record)
        if record.final is not None and record.final.get("status") != "UNPAID":
            with self.lock:
                self.paid.append(record.order_id)

    def pay(self, pay_url: str, silent: bool = False) -> dict[str, Any] | None:
        control = self.run.control
        # notify_drop is the sandbox's, for every trade: one pay at a time, so that only the
        # silent ones lose their notifications.
        with self.pay_lock:
            try:
                if silent:
                    control.set_faults(notify_drop=True)
                try:
                    return dict(control.pay(pay_url))
                finally:
                    if silent:
                        control.set_faults(notify_drop=False)
            except Exception:
                return None

    def notifications_settled(self, order_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                notes = self.run.control.notifications(order_id)
            except Exception:
                notes = []
            if notes and all(n["state"] not in ("pending", "held") for n in notes):
                return
            time.sleep(0.2)

    def buyer_return(self, http: Http, record: OrderRecord, query: str) -> None:
        """The pay_success page's PUT, tried again while the answer is not final."""
        for attempt in range(6):
            response = http.call("PUT", f"/payment/status/?{query}", tries=4, ok=(503,))
            if response is None:
                record.answers.append((0, "no answer"))
                self.count("return: no answer")
                continue
            self.count(f"return: {response.status_code}")
            record.answers.append((response.status_code, response.text[:200]))
            if response.status_code == 200:
                record.final = {"status": "PAID", "trade_id": response.json().get("trade_id")}
                record.final_kind = "return"
                return
            if response.status_code == 409:
                record.final = {"status": "LATE", "refund": response.json().get("refund")}
                record.final_kind = "return"
                return
            if response.status_code == 403:
                return
            time.sleep(min(0.5 * 2 ** attempt, 3))

    def buyer_status(self, http: Http, record: OrderRecord, tries: int = 10) -> None:
        """Poll the order's payment status until it leaves UNPAID (or give up)."""
        for attempt in range(tries):
            response = http.call("GET", f"/orders/{record.order_id}/payment/status/", tries=3)
            if response is not None and response.status_code == 200:
                body = response.json()
                record.final = {"status": body["status"], "trade_id": body["trade_id"]}
                record.final_kind = "status"
                if body["status"] != "UNPAID":
                    return
            time.sleep(min(0.5 * 2 ** attempt, 3))

    def buyer_cancel(self, http: Http, record: OrderRecord, pay_url: str, race: bool) -> None:
        payer: threading.Thread | None = None
        result: dict[str, Any] = {}
        if race:
            def pay() -> None:
                paid = self.pay(pay_url)
                if paid:
                    result.update(paid)
            payer = threading.Thread(target=pay)
            payer.start()
        response = http.call("POST", f"/orders/{record.order_id}/cancel/", ok=(503,))
        self.count(f"cancel: {response.status_code if response is not None else 0}")
        if payer is not None:
            payer.join()
            record.trade_no = result.get("trade_no", "")
        self.buyer_status(http, record, tries=3)

    # staff

    def staff_loop(self, token: str, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        api = Http(self.run.web_url)
        api.session.headers["Authorization"] = f"Token {token}"
        admin = Http(self.run.web_url)
        signed_in = False
        while not stop.is_set():
            stop.wait(rng.uniform(1.0, 3.0))
            with self.lock:
                candidates = list(self.paid)
            if not candidates:
                continue
            order_id = rng.choice(candidates)
            record = self.records[order_id]
            amount = (record.total if rng.random() < 0.3
                      else Decimal(rng.randint(1, int(record.total * 100) // 2)) / 100)
            try:
                if rng.random() < 0.5:
                    self.refund_api(api, order_id, amount, rng)
                else:
                    if not signed_in:
                        signed_in = self.admin_sign_in(admin)
                    if signed_in:
                        self.refund_admin(admin, order_id, amount, rng)
            except Exception as exc:
                self.refund_counts[f"error {type(exc).__name__}"] += 1

    def refund_api(self, http: Http, order_id: str, amount: Decimal,
                   rng: random.Random) -> None:
        key = f"chaos-{rng.getrandbits(64):x}"
        body = {"amount": f"{amount:.2f}", "reason": "Chaos run refund"}
        for _ in range(2 if rng.random() < 0.3 else 1):  # now and then sent twice
            response = http.call("POST", f"/orders/{order_id}/refunds/", json=body,
                                 headers={"Idempotency-Key": key})
            self.refund_counts[f"api {response.status_code if response is not None else 0}"] += 1

    def admin_sign_in(self, http: Http) -> bool:
        page = http.call("GET", "/admin/login/")
        if page is None or page.status_code != 200:
            return False
        token = _hidden(page.text, "csrfmiddlewaretoken")
        response = http.call("POST", "/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token, "username": "chaos-staff",
            "password": self.run.staff_password, "next": "/admin/",
        }, headers={"Referer": self.run.web_url + "/admin/login/"}, allow_redirects=False)
        return response is not None and response.status_code == 302

    def refund_admin(self, http: Http, order_id: str, amount: Decimal,
                     rng: random.Random) -> None:
        payment_id = self.run.applied_payment_id(order_id)
        if payment_id is None:
            self.refund_counts["admin: no applied payment"] += 1
            return
        path = f"/admin/payment/payment/{payment_id}/refund/"
        page = http.call("GET", path)
        if page is None or page.status_code != 200:
            self.refund_counts[f"admin form {page.status_code if page else 0}"] += 1
            return
        data = {"csrfmiddlewaretoken": _hidden(page.text, "csrfmiddlewaretoken"),
                "form_token": _hidden(page.text, "form_token"),
                "amount": f"{amount:.2f}", "reason": "Chaos run refund (admin)"}
        for _ in range(2 if rng.random() < 0.3 else 1):  # a double click
            response = http.call("POST", path, data=data, allow_redirects=False,
                                 headers={"Referer": self.run.web_url + path})
            code = response.status_code if response is not None else 0
            self.refund_counts[f"admin {code}"] += 1

    def final_answers(self) -> None:
        """Every order whose buyer heard no final word asks its status once more."""
        http = Http(self.run.web_url)
        tokens = self.run.buyer_tokens
        for record in list(self.records.values()):
            if record.final_kind == "return":
                continue
            http.session.headers["Authorization"] = f"Token {tokens[record.buyer]}"
            self.buyer_status(http, record, tries=1)


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html) or re.search(
        rf'value="([^"]*)" name="{name}"', html)
    return match.group(1) if match else ""


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Invariant:
    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)


class ChaosRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.faults = FaultLog()
        self.postgres = PrivatePostgres()
        self.stack = ChaosStack(self.postgres, args.redis_port)
        self.web_url = self.stack.web_url
        self.proxy: FaultProxy | None = None
        self.workers: list[ManagedProcess] = []
        self.web: ManagedProcess | None = None
        self.beat: ManagedProcess | None = None
        self.sku_id = 0
        self.staff_password = f"chaos-{self.rng.getrandbits(32):x}"
        self.buyer_tokens: dict[str, str] = {}
        self.traffic = Traffic(self)
        self.settled_in = 0.0
        self.bill_lines: list[str] = []
        self.started_at = time.time()
        self.unsettled = ""

    @property
    def control(self) -> SandboxControl:
        assert self.stack.sandbox is not None
        return self.stack.sandbox.control

    # set-up

    def start(self) -> None:
        log(f"PostgreSQL (private, initdb) on port {self.postgres.port}")
        self.postgres.start()
        self.stack.start_redis()
        self.stack.prepare()
        self.stack.start_chaos_sandbox(self.args.time_factor)
        self.proxy = FaultProxy(self.stack.sandbox_port, self.args.seed)
        gateway = f"http://127.0.0.1:{self.proxy.port}/gateway.do"
        self.stack.env["ALIPAY_GATEWAY"] = gateway
        os.environ["ALIPAY_GATEWAY"] = gateway
        self.data_create()
        self.web = self.stack.start_procfile("web")
        for index in (1, 2):
            worker = self.stack.start_procfile("worker", name=f"worker{index}",
                                               extra=f"--hostname worker{index}@%h")
            self.workers.append(worker)
        for worker in self.workers:
            worker.wait_log("ready.", timeout=90)
        self.beat = self.stack.start_procfile("beat", extra=f"--schedule {self.stack.tmp}/beat")
        self.beat.wait_log("beat: Starting", timeout=60)
        self.control.set_faults(notify_duplicate=0, notify_reorder=False)
        log(f"stack up: web {self.web_url}, sandbox {self.stack.sandbox_url}, "
            f"gateway through the fault proxy on {self.proxy.port}")

    def data_create(self) -> None:
        from shop.models import SKU, User

        sku = SKU.objects.create(name="Chaos widget", price=SKU_PRICE, stock=10_000_000)
        self.sku_id = sku.pk
        User.objects.create_superuser("chaos-staff", "staff@example.com", self.staff_password)

    def tokens_create(self, buyers: int) -> str:
        http = Http(self.web_url)
        for index in range(buyers):
            name = f"buyer{index}"
            password = f"pw-{self.rng.getrandbits(32):x}"
            response = http.call("POST", "/users/", json={"username": name, "password": password})
            assert response is not None and response.status_code == 201, response
            self.buyer_tokens[name] = self._token(http, name, password)
        return self._token(http, "chaos-staff", self.staff_password)

    @staticmethod
    def _token(http: Http, username: str, password: str) -> str:
        response = http.call("POST", "/authorizations/",
                             json={"username": username, "password": password})
        assert response is not None and response.status_code == 200, response
        return str(response.json()["token"])

    def applied_payment_id(self, order_id: str) -> int | None:
        rows = self.sql("SELECT id FROM payment_payment WHERE order_id = %s AND status = "
                        "'applied'", [order_id], tries=3)
        return int(rows[0][0]) if rows else None

    def sql(self, query: str, params: list[Any] | None = None, tries: int = 10) -> list[Any]:
        """A read on our database, through its restarts."""
        from django.db import connection
        from django.db.utils import Error

        for attempt in range(tries):
            try:
                with connection.cursor() as cursor:
                    cursor.execute(query, params or [])
                    return list(cursor.fetchall())
            except Error:
                connection.close()
                if attempt == tries - 1:
                    raise
                time.sleep(1)
        return []

    # faults

    def fault_loop(self, kinds: list[str], seed: int, stop: threading.Event) -> None:
        """One lane: every kind once in a shuffled order, then again, a random gap between."""
        rng = random.Random(seed)
        deck: list[str] = []
        stop.wait(rng.uniform(1, 3))
        while not stop.is_set():
            if not deck:
                deck = list(kinds)
                rng.shuffle(deck)
            kind = deck.pop()
            try:
                self.inject(kind, rng, stop)
            except Exception as exc:
                log(f"fault {kind} failed: {type(exc).__name__}: {exc}")
            stop.wait(rng.uniform(self.args.fault_gap / 2, self.args.fault_gap * 1.5))

    def inject(self, kind: str, rng: random.Random, stop: threading.Event) -> None:
        window = rng.uniform(2, 6)
        assert self.proxy is not None and self.web is not None and self.beat is not None
        if kind in ("worker_sigkill", "worker_sigterm"):
            worker = rng.choice(self.workers)
            sig = signal.SIGKILL if kind == "worker_sigkill" else signal.SIGTERM
            self.faults.add(kind, worker.name)
            os.kill(worker.pid, sig)
            self._wait_exit(worker, 30)
            stop.wait(rng.uniform(0.5, 3))
            worker.start()
        elif kind == "web_child_sigkill":
            pids = children(self.web.pid)
            if pids:
                self.faults.add(kind, f"pid {pids[0]}")
                os.kill(rng.choice(pids), signal.SIGKILL)
        elif kind == "web_sigterm":
            self.faults.add(kind)
            os.kill(self.web.pid, signal.SIGTERM)
            self._wait_exit(self.web, 40)
            stop.wait(rng.uniform(0.5, 2))
            self.web.start()
            wait_for_port(self.stack.web_port, timeout=60)
        elif kind == "beat_kill":
            self.faults.add(kind)
            self.beat.kill()
            stop.wait(rng.uniform(1, 4))
            self.beat.start()
        elif kind.startswith("postgres_restart"):
            mode = kind.rsplit("_", 1)[1]
            self.faults.add(kind)
            started = time.time()
            try:
                self.postgres.restart(mode)
            finally:
                self.faults.database_away(started, time.time())
        elif kind == "redis_restart":
            assert self.stack.redis is not None
            self.faults.add(kind, "restarted empty")
            self.stack.redis.stop()
            self.stack.redis.start()
            wait_for_port(self.stack.redis_port)
        elif kind == "redis_flush":
            import redis

            self.faults.add(kind, "FLUSHALL")
            redis.Redis.from_url(self.stack.redis_url).flushall()
        elif kind == "broker_away":
            assert self.stack.redis is not None
            self.faults.add(kind, f"{window:.1f} s")
            self.stack.redis.stop()
            stop.wait(window)
            self.stack.redis.start()
            wait_for_port(self.stack.redis_port)
        elif kind == "gateway_5xx":
            self.faults.add(kind, f"half the calls for {window:.1f} s")
            self.control.set_faults(error_rate=0.5, error_kind="http500")
            stop.wait(window)
            self.control.set_faults(error_rate=0)
        elif kind == "notify_dup_reorder":
            self.faults.add(kind, f"{window:.1f} s")
            self.control.set_faults(notify_duplicate=rng.randint(1, 2), notify_reorder=True,
                                    notify_reorder_window_s=0.5)
            stop.wait(window)
            self.control.set_faults(notify_duplicate=0, notify_reorder=False)
        else:  # gateway_slow, gateway_reset, gateway_late
            mode = kind.split("_", 1)[1]
            timeout = float(RUN_SETTINGS["ALIPAY_TIMEOUT_SECONDS"])
            self.faults.add(kind, f"{window:.1f} s")
            self.proxy.set(mode, delay=rng.uniform(0.3, 1.5), late=timeout + 1.0)
            stop.wait(window)
            self.proxy.set("pass")

    @staticmethod
    def _wait_exit(process: ManagedProcess, timeout: float) -> None:
        assert process.proc is not None
        try:
            process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        else:
            process.kill()  # what the leader left in its group

    def heal(self) -> None:
        """Every fault off, every process up."""
        assert self.proxy is not None and self.beat is not None and self.web is not None
        self.proxy.set("pass")
        assert self.stack.redis is not None
        if not process_running(self.stack.redis):
            self.stack.redis.start()
            wait_for_port(self.stack.redis_port)
        for process in [*self.workers, self.beat]:
            if not process_running(process):
                process.start()
        if not process_running(self.web):
            self.web.start()
            wait_for_port(self.stack.web_port, timeout=60)
        self.control.set_faults(error_rate=0, notify_duplicate=0, notify_reorder=False,
                                notify_drop=False)

    # the end

    def settle(self, timeout: float) -> bool:
        """Until the sandbox has nothing to deliver and nothing here waits (bounded)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                self.control.flush_notifications()
                notes = self.control.notifications()
            except Exception:
                time.sleep(1)
                continue
            open_notes = sum(n["state"] in ("pending", "held") for n in notes)
            (waiting_events,), = self.sql(
                "SELECT count(*) FROM payment_paymentevent WHERE state = 'received'")
            (open_refunds,), = self.sql(
                "SELECT count(*) FROM payment_refund WHERE state IN "
                "('requested', 'sent', 'unknown')")
            (pending_payments,), = self.sql(
                "SELECT count(*) FROM payment_payment WHERE status = 'refund_pending'")
            # Traffic has stopped: every unpaid order is to be paid or expired.
            (unpaid,), = self.sql("SELECT count(*) FROM shop_orderinfo WHERE status = 1")
            unapplied = len(self.paid_trades_unapplied())
            if not (open_notes or waiting_events or open_refunds or pending_payments
                    or unpaid or unapplied):
                self.settled_in = time.monotonic() - started
                return True
            self.unsettled = (
                f"notifications {open_notes}, events {waiting_events}, refunds "
                f"{open_refunds}, late payments {pending_payments}, unpaid orders "
                f"{unpaid}, paid trades not applied {unapplied}")
            log(f"settling: {self.unsettled}")
            time.sleep(2)
        self.settled_in = time.monotonic() - started
        return False

    def sandbox_rows(self, table: str) -> list[sqlite3.Row]:
        assert self.stack.sandbox is not None
        db = sqlite3.connect(f"file:{self.stack.sandbox.store}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return list(db.execute(f"SELECT * FROM {table}"))  # noqa: S608 (fixed names)
        finally:
            db.close()

    def paid_trades_unapplied(self) -> list[str]:
        paid = {row["trade_no"] for row in self.sandbox_rows("trades") if row["trade_no"]}
        ours = {row[0] for row in self.sql("SELECT trade_id FROM payment_payment")}
        return sorted(paid - ours)

    def bill_run(self) -> None:
        """Alipay's bills are T+1: move the sandbox's clock a day on and reconcile each day
        of the run (Beijing time) against its bill."""
        days = sorted({datetime.fromtimestamp(at, BEIJING).date()
                       for at in (self.started_at, time.time())})
        self.control.set_settings(clock_offset_s=86400 * (1 + (days[-1] - days[0]).days))
        for day in days:
            result = subprocess.run(
                [sys.executable, "manage.py", "reconcile_bill", "--date", day.isoformat()],
                cwd=ROOT, env=self.stack.env, capture_output=True, text=True, timeout=300)
            lines = (result.stdout.strip() or result.stderr.strip()[-500:]).splitlines()
            self.bill_lines.append(lines[0] if lines else f"exit {result.returncode}")
            log(f"bill run {day}: {self.bill_lines[-1]}")

    def check(self) -> list[Invariant]:
        trades = {row["out_trade_no"]: row for row in self.sandbox_rows("trades")}
        alipay_refunds = {row["out_request_no"]: row for row in self.sandbox_rows("refunds")}
        notes = self.sandbox_rows("notifications")
        payments = self.sql("SELECT trade_id, order_id, amount, status FROM payment_payment")
        orders = {row[0]: (row[1], row[2]) for row in self.sql(
            "SELECT order_id, status, total_amount FROM shop_orderinfo")}
        status_names = {1: "UNPAID", 2: "UNSEND", 3: "UNRECEIVED", 4: "UNCOMMENT",
                        5: "FINISHED", 6: "CANCELED", 7: "REFUNDED"}
        paid_statuses = {2, 3, 4, 5, 7}

        applied = Invariant("every trade paid at Alipay is applied exactly once")
        by_trade: dict[str, list[Any]] = collections.defaultdict(list)
        for payment in payments:
            by_trade[payment[0]].append(payment)
        alipay_paid = {row["trade_no"]: row for row in trades.values() if row["trade_no"]}
        for trade_no, trade in alipay_paid.items():
            applied.checked += 1
            rows = by_trade.get(trade_no, [])
            order = orders.get(trade["out_trade_no"])
            if len(rows) != 1:
                applied.violations.append(f"{trade['out_trade_no']} {trade_no}: {len(rows)} "
                                          "payments here")
                continue
            _, order_id, amount, status = rows[0]
            if order_id != trade["out_trade_no"] or amount != Decimal(trade["total_amount"]):
                applied.violations.append(f"{trade_no}: order {order_id} amount {amount} here, "
                                          f"{trade['out_trade_no']} {trade['total_amount']} "
                                          "at Alipay")
            elif status == "applied" and (order is None or order[0] not in paid_statuses):
                applied.violations.append(f"{order_id} {trade_no}: applied, order "
                                          f"{status_names.get(order[0] if order else 0)}")
            elif status != "applied" and order is not None and order[0] != 6:
                applied.violations.append(f"{order_id} {trade_no}: {status}, order "
                                          f"{status_names.get(order[0])}")
        for trade_no in set(by_trade) - set(alipay_paid):
            applied.checked += 1
            applied.violations.append(f"{trade_no}: a payment here that Alipay lacks")

        canceled = Invariant("no order both canceled and charged without a refund")
        for order_id, (status, total) in orders.items():
            found = trades.get(order_id)
            if status not in (6, 7):
                continue
            canceled.checked += 1
            if found is None or not found["trade_no"]:
                continue
            refunded = Decimal(found["refund_fee"])
            if status == 6 and refunded != Decimal(found["total_amount"]):
                canceled.violations.append(f"{order_id}: canceled, paid {found['total_amount']}"
                                           f" at Alipay, refunded {refunded}")
            if status == 7 and refunded != total:
                canceled.violations.append(f"{order_id}: REFUNDED here, {refunded} of "
                                           f"{total} refunded at Alipay")

        ledger = Invariant("every refund at Alipay is in the ledger, and only those")
        ours = {row[0]: row for row in self.sql(
            "SELECT out_request_no, order_id, amount, state FROM payment_refund")}
        for number, row in alipay_refunds.items():
            ledger.checked += 1
            mine = ours.get(number)
            if mine is None:
                ledger.violations.append(f"{row['out_trade_no']} {number}: refunded "
                                         f"{row['refund_amount']} at Alipay, not in the ledger")
            elif (mine[1], mine[2], mine[3]) != (row["out_trade_no"],
                                                 Decimal(row["refund_amount"]), "succeeded"):
                ledger.violations.append(f"{number}: ledger {mine[1]} {mine[2]} {mine[3]}, "
                                         f"Alipay {row['out_trade_no']} {row['refund_amount']}")
        for number, mine in ours.items():
            if mine[3] == "succeeded" and number not in alipay_refunds:
                ledger.checked += 1
                ledger.violations.append(f"{mine[1]} {number}: succeeded in the ledger, "
                                         "Alipay lacks it")

        waiting = Invariant("no event or refund waiting past the retry horizon")
        horizon = (float(RUN_SETTINGS["PAYMENT_RETRY_BACKOFF_MAX"])
                   + float(RUN_SETTINGS["PAYMENT_CLAIM_LEASE_SECONDS"])
                   + 2 * float(RUN_SETTINGS["PAYMENT_SWEEP_INTERVAL_SECONDS"])
                   + float(RUN_SETTINGS["REFUND_CONFIRM_DELAY_SECONDS"]) + HORIZON_SLACK)
        for row in self.sql(
                "SELECT id, source, out_trade_no, state, attempts, "
                "coalesce(next_attempt_at, received_at) < now() - make_interval(secs => %s) "
                "FROM payment_paymentevent", [horizon]):
            waiting.checked += 1
            if row[3] == "received" and row[5]:
                waiting.violations.append(f"event {row[0]} ({row[1]} {row[2]}) waiting, "
                                          f"{row[4]} attempts")
        for row in self.sql(
                "SELECT out_request_no, state, attempts, coalesce(next_attempt_at, updated_at) "
                "< now() - make_interval(secs => %s) FROM payment_refund", [horizon]):
            waiting.checked += 1
            if row[1] in ("requested", "sent", "unknown") and row[3]:
                waiting.violations.append(f"refund {row[0]} {row[1]} waiting, {row[2]} attempts")

        answers = Invariant("no 5xx to Alipay but fail/503 while the database was away")
        for note in notes:
            for attempt in json.loads(note["attempts"]):
                status = attempt.get("http_status")
                if status is None:
                    continue
                answers.checked += 1
                if status < 500:
                    continue
                if (status == 503 and (attempt.get("body") or "").strip() == "fail"
                        and self.faults.while_database_away(float(attempt["at"]))):
                    continue
                answers.violations.append(
                    f"{note['out_trade_no']} {note['trade_status']}: {status} "
                    f"{(attempt.get('body') or '')[:40]!r} at "
                    f"{time.strftime('%H:%M:%S', time.gmtime(float(attempt['at'])))}")

        buyers = Invariant("every buyer's final answer agrees with the order")
        applied_by_order = {row[1]: row[0] for row in payments if row[3] == "applied"}
        for record in self.traffic.records.values():
            if record.final is None:
                continue
            buyers.checked += 1
            order = orders.get(record.order_id)
            name = status_names.get(order[0]) if order else None
            said = record.final
            if said["status"] == "PAID":
                if applied_by_order.get(record.order_id) != said["trade_id"]:
                    buyers.violations.append(f"{record.order_id}: told paid by "
                                             f"{said['trade_id']}, order {name}, applied "
                                             f"{applied_by_order.get(record.order_id)}")
            elif said["status"] == "LATE":
                if record.order_id in applied_by_order and (
                        applied_by_order[record.order_id] == record.trade_no):
                    buyers.violations.append(f"{record.order_id}: told refunded (late), yet "
                                             "its trade paid the order")
            elif (said["status"], said["trade_id"]) != (
                    name, applied_by_order.get(record.order_id)):
                buyers.violations.append(f"{record.order_id}: told {said['status']} "
                                         f"{said['trade_id']}, order {name} "
                                         f"{applied_by_order.get(record.order_id)}")
        return [applied, canceled, ledger, waiting, answers, buyers]

    # the whole run

    def main(self) -> int:
        self.start()
        staff_token = self.tokens_create(self.args.buyers)
        self.started_at = time.time()
        stop_traffic, stop_faults = threading.Event(), threading.Event()
        # Daemons: a SIGTERM ends the run in the main thread, which stops the processes.
        threads = [threading.Thread(target=self.traffic.buyer_loop,
                                    args=(index, self.buyer_tokens[f"buyer{index}"],
                                          stop_traffic, self.args.seed * 100 + index),
                                    daemon=True)
                   for index in range(self.args.buyers)]
        threads.append(threading.Thread(
            target=self.traffic.staff_loop,
            args=(staff_token, stop_traffic, self.args.seed * 100 + 99), daemon=True))
        lanes = [threading.Thread(target=self.fault_loop, args=(kinds, self.args.seed * 10 + n,
                                                                stop_faults), daemon=True)
                 for n, kinds in enumerate((PROCESS_FAULTS, GATEWAY_FAULTS))]
        for thread in [*threads, *lanes]:
            thread.start()
        log(f"traffic and faults for {self.args.seconds} s (seed {self.args.seed})")
        deadline = time.monotonic() + self.args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            log(f"orders {len(self.traffic.records)}, faults {sum(self.faults.counts.values())}")
        stop_faults.set()
        for lane in lanes:
            lane.join()
        stop_traffic.set()
        for thread in threads:
            thread.join(120)
        self.heal()
        log("faults off; settling")
        settled = self.settle(self.args.settle_seconds)
        self.bill_run()
        first = self.settled_in
        settled = self.settle(self.args.settle_seconds / 2) and settled
        self.settled_in += first
        self.traffic.final_answers()
        invariants = self.check()
        return self.report(invariants, settled)

    def report(self, invariants: list[Invariant], settled: bool) -> int:
        print()
        print(f"Chaos run: {self.args.seconds} s of traffic, seed {self.args.seed}, "
              f"time factor {self.args.time_factor}, {self.args.buyers} buyers; "
              f"settled in {self.settled_in:.0f} s"
              + ("" if settled else f" (NOT settled: {self.unsettled})"))
        print(f"orders {len(self.traffic.records)}: "
              + ", ".join(f"{k} {v}" for k, v in sorted(self.traffic.counts.items())))
        print("refund requests: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.traffic.refund_counts.items())))
        for line in self.bill_lines:
            print(f"bill run: {line}")
        print()
        print("| fault injected | count |")
        print("| --- | --- |")
        for kind in FAULT_KINDS:
            print(f"| {kind} | {self.faults.counts.get(kind, 0)} |")
        print(f"| total | {sum(self.faults.counts.values())} |")
        print()
        print("| invariant | checked | violations |")
        print("| --- | --- | --- |")
        for invariant in invariants:
            print(f"| {invariant.name} | {invariant.checked} | {len(invariant.violations)} |")
        failed = [invariant for invariant in invariants if invariant.violations]
        for invariant in failed:
            print(f"\nVIOLATIONS: {invariant.name}")
            for line in invariant.violations[:30]:
                print(f"  {line}")
        print(f"\nreproduce: .venv/bin/python bench/chaos.py --seconds {self.args.seconds} "
              f"--seed {self.args.seed}")
        return 1 if failed or not settled else 0

    def stop(self) -> None:
        # All at once: a worker's soft shutdown and the web's graceful one overlap.
        for process in self.stack.processes:
            if process_running(process):
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.stack.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.postgres.stop()
        if self.args.keep_logs:
            target = Path(self.args.keep_logs)
            target.mkdir(parents=True, exist_ok=True)
            for path in self.stack.tmp.glob("*.log"):
                shutil.copy(path, target / path.name)
        shutil.rmtree(self.stack.tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="traffic and faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--buyers", type=int, default=4, help="buyer threads")
    parser.add_argument("--fault-gap", type=float, default=3.0,
                        help="mean seconds between two faults of a lane")
    parser.add_argument("--time-factor", type=float, default=0.01,
                        help="the sandbox's: Alipay's notification retries 4 min -> 2.4 s")
    parser.add_argument("--settle-seconds", type=float, default=90,
                        help="the longest wait for the system to settle after the faults")
    parser.add_argument("--redis-port", type=int, default=6391)
    parser.add_argument("--keep-logs", default="", help="copy the processes' logs here")
    args = parser.parse_args()
    run = ChaosRun(args)
    atexit.register(run.stop)
    try:
        return run.main()
    finally:
        atexit.unregister(run.stop)
        run.stop()


if __name__ == "__main__":
    sys.exit(main())
