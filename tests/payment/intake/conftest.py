"""The intake's contract suite runs against the web the Procfile starts, on each database the
project ships for: PostgreSQL with Redis (production) and `make run`'s embedded defaults
(SQLite, the filesystem broker, no Redis). Each stack is the Procfile's web and worker
processes; a test reaches them over HTTP only and reads the books with plain SQL.
"""
import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from alipay_sandbox.client import SandboxControl
from tests.conftest import worker_process
from tests.support import (
    ManagedProcess,
    ShopClient,
    free_port,
    process_fixture,
    procfile_command,
    python_args,
    query_params,
    wait_for_port,
)


class Books:
    """The stack's database, read (and set up) with plain SQL, as an auditor would."""

    def __init__(self, connect: Callable[[], Any], placeholder: str) -> None:
        self._connect = connect
        self._placeholder = placeholder

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            cursor = conn.execute(sql.replace("%s", self._placeholder), args)
            names = [d[0] for d in cursor.description] if cursor.description else []
            rows = ([dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                    if names else [])
            conn.commit()
        finally:
            conn.close()
        for row in rows:
            for key in ("raw_data", "sample"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
        return rows

    def order_status(self, order_id: str) -> int:
        return int(self.rows("SELECT status FROM shop_orderinfo WHERE order_id = %s",
                             order_id)[0]["status"])

    def payments(self, order_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT trade_id, amount, source, status FROM payment_payment"
                         " WHERE order_id = %s", order_id)

    def events(self, out_trade_no: str, source: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, source, state, reason, attempts, deliveries, last_error, raw_data"
               " FROM payment_paymentevent WHERE out_trade_no = %s")
        args: list[Any] = [out_trade_no]
        if source:
            sql += " AND source = %s"
            args.append(source)
        return self.rows(sql + " ORDER BY id", *args)

    def refused(self, out_trade_no: str) -> list[dict[str, Any]]:
        return self.rows("SELECT source, count, reason, sample FROM payment_refusedrequest"
                         " WHERE out_trade_no = %s", out_trade_no)

    def sku_create(self, price: Decimal, stock: int = 1000) -> int:
        rows = self.rows("INSERT INTO shop_sku (name, price, stock) VALUES (%s, %s, %s)"
                         " RETURNING id", f"SKU {price}", str(price), stock)
        return int(rows[0]["id"])


@dataclass
class IntakeStack:
    name: str
    base_url: str
    books: Books
    env: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)
    _buyer: ShopClient | None = None
    _buyer_name: str = ""

    def buyer(self) -> ShopClient:
        """A signed-in buyer, kept while the database keeps it (signing up and in costs two
        password hashes; pytest-django empties the PostgreSQL stack's database after each
        test, the SQLite stack keeps its rows). The stack allows any number of unpaid orders."""
        if self._buyer is None or not self.books.rows(
                "SELECT id FROM shop_user WHERE username = %s", self._buyer_name):
            self._buyer_name = f"buyer{os.getpid()}x{free_port()}"
            self._buyer = ShopClient(self.base_url).register_and_login(self._buyer_name)
        return self._buyer

    def unpaid_order(self, amount: str) -> tuple[ShopClient, str, str]:
        """A signed-in buyer, an UNPAID order of `amount` and its pay link."""
        shop = self.buyer()
        sku = self.books.sku_create(Decimal(amount))
        order_id = shop.order([{"sku_id": sku, "count": 1}])["order_id"]
        response = shop.pay_link(order_id)
        assert response.status_code == 200, response.text
        return shop, order_id, response.json()["alipay_url"]

    def paid_order(self, sandbox: SandboxControl,
                   amount: str = "257.60") -> tuple[ShopClient, str, dict[str, str]]:
        """An order its buyer paid at the sandbox, and the return parameters."""
        shop, order_id, url = self.unpaid_order(amount)
        paid = sandbox.pay(url)
        return shop, order_id, query_params(paid["return_url"])


def web_env(base: dict[str, str], port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {**base, "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
            "ORDER_MAX_UNPAID": "100000", "DATABASE_POOL_TIMEOUT_SECONDS": "2",
            "RETURN_WAIT_SECONDS": "5", "ALIPAY_RETURN_URL": f"{url}/pay_success.html",
            "ALIPAY_NOTIFY_URL": f"{url}/payment/alipay/notify/"}


def web_start(env: dict[str, str], log_dir: Path, name: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    web = ManagedProcess(name, procfile_command("web"), web_env(env, port), log_dir).start()
    wait_for_port(port, timeout=60)
    return web, f"http://127.0.0.1:{port}"


def sqlite_env(base: dict[str, str], folder: Path) -> dict[str, str]:
    """`make run`'s embedded defaults (SQLite, the filesystem broker, no Redis) in `folder`."""
    env = {k: v for k, v in base.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PAYMENT_REDIS_URL",
                        "CELERY_BEAT_REDIS_URL")}
    return {**env, "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "CELERY_BROKER_FOLDER": str(folder / "broker")}


def _postgresql_stack(worker_env: dict[str, str], log_dir: Path) -> Iterator[IntakeStack]:
    web, url = web_start(worker_env, log_dir, "intake-web-pg")
    conninfo = worker_env["DATABASE_URL"]
    yield IntakeStack("postgresql", url, Books(lambda: psycopg.connect(conninfo), "%s"),
                      worker_env, [web])
    web.stop()


def _sqlite_stack(worker_env: dict[str, str], log_dir: Path,
                  folder: Path) -> Iterator[IntakeStack]:
    env = sqlite_env(worker_env, folder)
    subprocess.run(python_args("manage.py", "migrate", "--noinput", "-v", "0"), env=env,
                   check=True, timeout=120)
    worker = worker_process(env, log_dir, "intake-worker-sqlite", concurrency=2).start()
    worker.wait_log("ready.", timeout=60)
    web, url = web_start(env, log_dir, "intake-web-sqlite")
    database = folder / "db.sqlite3"
    yield IntakeStack("sqlite", url, Books(lambda: sqlite3.connect(database, timeout=20), "?"),
                      env, [web, worker])
    web.stop()
    worker.stop()


@process_fixture(scope="session", params=["postgresql", "sqlite"])
def intake_stack(request: pytest.FixtureRequest, worker_env: dict[str, str], log_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntakeStack]:
    """The Procfile's web (and worker) on one database; PostgreSQL's worker is the session's."""
    if request.param == "postgresql":
        request.getfixturevalue("celery_workers")
        yield from _postgresql_stack(worker_env, log_dir)
    else:
        yield from _sqlite_stack(worker_env, log_dir, tmp_path_factory.mktemp("intake-sqlite"))


@pytest.fixture
def stack(intake_stack: IntakeStack, sandbox: SandboxControl) -> IntakeStack:
    """The stack for one test. Refusals are counted per client and hour, and every client here
    is 127.0.0.1: the counts start from none, as on the test database pytest-django empties."""
    intake_stack.books.rows("DELETE FROM payment_refusedrequest")
    return intake_stack
