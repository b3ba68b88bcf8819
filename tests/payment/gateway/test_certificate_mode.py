"""Certificate mode end to end: the Procfile's web and a real worker on a database of their own,
against the sandbox in certificate mode (its own CA, a root file shaped like Alipay's), over
HTTP. A payment, a refund, a reconciliation and a bill; Alipay's certificate renewed while
returns and notifications flow; a renewed certificate that does not chain refused; an expired
app certificate stopping start-up. And key mode's switch to a new Alipay key.
"""
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from django.utils import timezone

from alipay_sandbox import certs as sandbox_certs
from alipay_sandbox.client import SandboxControl
from alipay_sandbox.testing import SandboxProcess, start_sandbox
from payment import gateway
from payment.gateway import certs
from payment.gateway.keys import write_keys
from tests.conftest import worker_process
from tests.payment.intake.conftest import Books, web_start
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    ShopClient,
    process_env,
    process_fixture,
    procfile_command,
    python_args,
    query_params,
    redis_url,
    wait_for,
    wait_for_port,
)

pytestmark = [pytest.mark.slow]

# Not the session's Redis database, and one per stack: a worker takes whatever its
# broker holds, whichever stack's database the task was meant for.
BROKERS = {"certmode": redis_url(11), "keyswitch": redis_url(10)}
PAID = 2  # OrderInfo.Status.UNSEND: paid, to be sent


@dataclass
class Stack:
    """The Procfile's web and a worker on a database of their own, and their sandbox."""

    base_url: str
    books: Books
    env: dict[str, str]
    sandbox_process: SandboxProcess
    keys: Path
    processes: list[ManagedProcess]

    @property
    def sandbox(self) -> SandboxControl:
        return self.sandbox_process.control

    def buyer(self) -> ShopClient:
        return ShopClient(self.base_url).register_and_login(f"buyer{time.monotonic_ns()}")

    def unpaid_order(self, shop: ShopClient, amount: str = "88.00") -> tuple[str, str]:
        sku = self.books.sku_create(Decimal(amount))
        order_id = shop.order([{"sku_id": sku, "count": 1}])["order_id"]
        response = shop.pay_link(order_id)
        assert response.status_code == 200, response.text
        return order_id, response.json()["alipay_url"]

    def manage(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(python_args("manage.py", *args), env={**self.env, **env},
                              capture_output=True, text=True, timeout=120, check=False)

    def logs(self) -> str:
        return "".join(process.log_text() for process in self.processes)

    def control(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        response = requests.request(method, f"{self.sandbox.base_url}/_sandbox/{path}",
                                    json=body, timeout=10)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def _database(name: str) -> str:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def _stack(keys: Path, log_dir: Path, tmp: Path, name: str, alipay_env: dict[str, str],
           *sandbox_args: str) -> Iterator[Stack]:
    sandbox = start_sandbox(keys, tmp / "sandbox.sqlite3", *sandbox_args, app_id=APP_ID,
                            seller_id=SELLER_ID, log_dir=log_dir, name=f"{name}-sandbox")
    database = _database(f"{name}_{int(time.time())}")
    broker = BROKERS[name]
    redis.Redis.from_url(broker).flushdb()
    env = process_env(
        ALIPAY_APPID=APP_ID, ALIPAY_SELLER_ID=SELLER_ID,
        ALIPAY_GATEWAY=f"{sandbox.control.base_url}/gateway.do",
        ALIPAY_APP_PRIVATE_KEY_PATH=str(keys / "app_private_key.pem"),
        ALIPAY_TIMEOUT_SECONDS="5", ALIPAY_KEYS_REFRESH_SECONDS="1",
        # Pay links due for reconciliation a second on (no beat runs it: the test does).
        RECONCILE_AFTER_SECONDS="1",
        DATABASE_URL=database, CELERY_BROKER_URL=broker, LOG_LEVEL="INFO",
        no_proxy="127.0.0.1,localhost", **alipay_env,
    )
    subprocess.run(python_args("manage.py", "migrate", "--noinput", "-v", "0"), env=env,
                   check=True, timeout=120)
    worker = worker_process(env, log_dir, f"{name}-worker", concurrency=2).start()
    worker.wait_log("ready.", timeout=60)
    web, url = web_start(env, log_dir, f"{name}-web")
    books = Books(lambda: psycopg.connect(database.replace("postgres://", "postgresql://")), "%s")
    yield Stack(url, books, env, sandbox, keys, [web, worker])
    web.stop()
    worker.stop()
    sandbox.stop()


@pytest.fixture(scope="module")
def cert_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop's key pair and the sandbox's, then certificate mode's files as the sandbox
    issues them (what `manage.py alipay_keys --sandbox --cert` writes for `make run`)."""
    keys = tmp_path_factory.mktemp("cert-keys")
    write_keys(keys, sandbox=True)
    sandbox_certs.write_setup(keys, app_id=APP_ID)
    return keys


def cert_env(keys: Path) -> dict[str, str]:
    return {"ALIPAY_APP_CERT_PATH": str(keys / "appCertPublicKey.crt"),
            "ALIPAY_CERT_PATH": str(keys / "alipayCertPublicKey_RSA2.crt"),
            "ALIPAY_ROOT_CERT_PATH": str(keys / "alipayRootCert.crt"),
            # Certificate mode never reads it: a path that does not exist shows it.
            "ALIPAY_PUBLIC_KEY_PATH": str(keys / "no-such-key.pem")}


@process_fixture(scope="module")
def stack(cert_keys: Path, log_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(cert_keys, log_dir, tmp_path_factory.mktemp("cert-stack"), "certmode",
                      cert_env(cert_keys), "--cert-dir", str(cert_keys))


def _paid_once(stack: Stack, order_id: str) -> bool:
    return (stack.books.order_status(order_id) == PAID
            and len(stack.books.payments(order_id)) == 1)


def _staff_token(stack: Stack) -> str:
    name = f"operator{time.monotonic_ns()}"
    done = stack.manage("createsuperuser", "--noinput", "--username", name,
                        "--email", f"{name}@example.com",
                        DJANGO_SUPERUSER_PASSWORD="operator-pass-1")
    assert done.returncode == 0, done.stderr
    response = requests.post(f"{stack.base_url}/authorizations/",
                             json={"username": name, "password": "operator-pass-1"}, timeout=10)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["token"])


def test_pay_refund_reconcile_and_bill_in_certificate_mode(stack: Stack) -> None:
    shop = stack.buyer()
    order_id, url = stack.unpaid_order(shop, "88.00")
    # The pay link carries both serial numbers, as Alipay's SDKs compute them.
    link = query_params(url)
    app_sn = certs.cert_sn((stack.keys / "appCertPublicKey.crt").read_bytes())
    root_sn = certs.root_cert_sn((stack.keys / "alipayRootCert.crt").read_bytes())
    assert (link["app_cert_sn"], link["alipay_root_cert_sn"]) == (app_sn, root_sn)
    assert "_" not in root_sn  # one RSA root; the SM2 and ECDSA roots are not counted
    assert stack.control("GET", "certs")["app_cert_sn"] == app_sn

    # The buyer pays; the return (checked with a trade query, whose answer names Alipay's
    # certificate) and the notification pay the order once.
    paid = stack.sandbox.pay(url)
    answer = shop.put_status(query_params(paid["return_url"]))
    assert answer.status_code == 200, answer.text
    wait_for(lambda: _paid_once(stack, order_id), 20)
    stack.sandbox.wait_notifications(order_id)
    assert [e["state"] for e in stack.books.events(order_id)] in (
        ["applied", "applied"], ["applied", "recorded"])

    # A refund, sent to Alipay by a worker and confirmed with the refund query.
    token = _staff_token(stack)
    refund = requests.post(f"{stack.base_url}/orders/{order_id}/refunds/",
                           json={"amount": "8.00", "reason": "Damaged in transit"},
                           headers={"Authorization": f"Token {token}"}, timeout=20)
    assert refund.status_code in (201, 202), refund.text
    wait_for(lambda: stack.books.rows(
        "SELECT state FROM payment_refund WHERE order_id = %s", order_id)
        == [{"state": "succeeded"}], 30)
    assert stack.sandbox.trade(order_id)["refund_fee"] == "8.00"

    # A payment whose return and notification never came: reconciliation finds it.
    lost_id, lost_url = stack.unpaid_order(shop, "12.30")
    stack.sandbox.set_faults(notify_drop=True)
    try:
        stack.sandbox.pay(lost_url)
    finally:
        stack.sandbox.clear_faults()
    time.sleep(1.2)
    done = stack.manage("reconcile_payments")
    assert done.returncode == 0, done.stderr
    assert "'paid'" in done.stdout or "applied" in done.stdout, done.stdout
    wait_for(lambda: _paid_once(stack, lost_id), 20)
    assert stack.books.payments(lost_id)[0]["source"] == "query"

    # Today's bill, downloaded through the gateway's signed answer, matches the books.
    today = timezone.now().astimezone(gateway.BEIJING).date()
    stack.sandbox.set_settings(clock_offset_s=86400)
    try:
        done = stack.manage("reconcile_bill", "--date", today.isoformat())
    finally:
        stack.sandbox.clear_settings()
    assert done.returncode == 0, done.stderr
    report = stack.books.rows("SELECT state, alipay_trades, matched FROM payment_billreport"
                              " WHERE bill_date = %s", today)
    assert report and report[0]["state"] == "done", report
    assert report[0]["alipay_trades"] == report[0]["matched"] >= 2
    # Nothing refused on the way, and every answer verified with the configured certificate.
    assert stack.books.rows("SELECT count(*) AS n FROM payment_refusedrequest")[0]["n"] == 0
    assert stack.books.rows("SELECT count(*) AS n FROM payment_alipaycertificate")[0]["n"] == 0


def test_a_renewal_of_alipays_certificate_mid_traffic_refuses_nothing(stack: Stack) -> None:
    shop = stack.buyer()
    before = stack.control("GET", "certs")["current"]
    orders = [stack.unpaid_order(shop, f"{20 + i}.00") for i in range(24)]

    def pay(item: tuple[str, str]) -> None:
        paid = stack.sandbox.pay(item[1])
        answer = shop.put_status(query_params(paid["return_url"]))
        assert answer.status_code in (200, 202), answer.text

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(pay, item) for item in orders[:12]]
        time.sleep(0.3)
        renewed = stack.control("POST", "certs/renew")
        later = [pool.submit(pay, item) for item in orders[12:]]
        for future in first + later:
            future.result()
    assert renewed["previous"] == before and renewed["alipay_cert_sn"] != before

    for order_id, _ in orders:
        wait_for(lambda order_id=order_id: _paid_once(stack, order_id), 30)
    for order_id, _ in orders:
        stack.sandbox.wait_notifications(order_id)
    wait_for(lambda: not stack.books.rows(
        "SELECT id FROM payment_paymentevent WHERE state = 'received'"), 30)
    # Nothing refused: no request turned away, no event rejected.
    assert stack.books.rows("SELECT count(*) AS n FROM payment_refusedrequest")[0]["n"] == 0
    assert not stack.books.rows(
        "SELECT id, reason FROM payment_paymentevent WHERE state IN ('rejected', 'dead')")
    # The new certificate was downloaded once, by one process, and chains to the root.
    rows = stack.books.rows("SELECT sn, refusal FROM payment_alipaycertificate")
    assert rows == [{"sn": renewed["alipay_cert_sn"], "refusal": ""}]
    assert len(re.findall(r"alipay certificate \w+ downloaded and trusted", stack.logs())) == 1
    # Later answers are verified with it, and the operators' command shows it.
    done = stack.manage("alipay_certs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert renewed["alipay_cert_sn"] in done.stdout and "chain to the root holds" in done.stdout


def test_a_renewed_certificate_that_does_not_chain_is_refused(stack: Stack) -> None:
    shop = stack.buyer()
    order_id, url = stack.unpaid_order(shop, "66.60")
    forged = stack.control("POST", "certs/renew", untrusted=True)
    try:
        paid = stack.sandbox.pay(url)
        # Signed with a key whose certificate does not chain: the intake refuses it.
        answer = shop.put_status(query_params(paid["return_url"]))
        assert answer.status_code == 403, answer.text
        wait_for(lambda: stack.books.rows(
            "SELECT refusal FROM payment_alipaycertificate WHERE sn = %s",
            forged["alipay_cert_sn"]), 20)
        refusal = stack.books.rows("SELECT refusal FROM payment_alipaycertificate WHERE sn = %s",
                                   forged["alipay_cert_sn"])[0]["refusal"]
        assert "not a root of the root file" in refusal
        assert stack.books.order_status(order_id) != PAID
        assert not stack.books.payments(order_id)
        assert re.search(rf"alipay certificate {forged['alipay_cert_sn']} refused",
                         stack.logs())
    finally:
        trusted = stack.control("POST", "certs/renew")
    # Alipay signs with a certificate that chains again: the payment is not lost, the
    # reconciliation's trade query (whose answer it signs) finds it.
    time.sleep(1.2)
    done = stack.manage("reconcile_payments")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _paid_once(stack, order_id), 20)
    assert trusted["alipay_cert_sn"] in {r["sn"] for r in stack.books.rows(
        "SELECT sn FROM payment_alipaycertificate WHERE refusal = ''")}


def _expired_app_certificate(keys: Path, path: Path) -> None:
    """The app's certificate as the sandbox's CA issued it, but ended yesterday."""
    ca_key = serialization.load_pem_private_key(
        (keys / "sandbox_ca" / "ca_key.pem").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((keys / "sandbox_ca" / "ca_cert.pem").read_bytes())
    app = x509.load_pem_x509_certificate((keys / "appCertPublicKey.crt").read_bytes())
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(app.subject).issuer_name(ca.subject)
                   .public_key(app.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=400))
                   .not_valid_after(now - timedelta(days=1))
                   .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_an_expired_app_certificate_stops_start_up_with_a_clear_message(
        cert_keys: Path, tmp_path: Path) -> None:
    expired = tmp_path / "appCertPublicKey.crt"
    _expired_app_certificate(cert_keys, expired)
    env = process_env(**{**cert_env(cert_keys), "ALIPAY_APP_CERT_PATH": str(expired)},
                      ALIPAY_APP_PRIVATE_KEY_PATH=str(cert_keys / "app_private_key.pem"),
                      DATABASE_URL="sqlite:///" + str(tmp_path / "db.sqlite3"),
                      CELERY_BROKER_URL="filesystem://", WEB_BIND="127.0.0.1:0")
    message = re.compile(rf"App certificate {re.escape(str(expired))} expired on \d{{4}}-")
    for args in (procfile_command("web"),
                 python_args("-m", "celery", "-A", "workers", "worker", "--pool", "solo"),
                 python_args("manage.py", "check")):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode != 0, args
        assert message.search(done.stderr), (args, done.stderr[-2000:])
    # The operators' command says the same, and what is fine.
    done = subprocess.run(python_args("manage.py", "alipay_certs"), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "mode: certificate" in done.stdout and "NOT USABLE: expired" in done.stdout
    assert "chain to the root holds" in done.stdout  # Alipay's own is fine


@pytest.fixture(scope="module")
def switch_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Key mode: the sandbox's old and new key pairs; the shop's file holds both public keys."""
    keys = tmp_path_factory.mktemp("switch-keys")
    write_keys(keys, sandbox=True)
    new = tmp_path_factory.mktemp("switch-new")
    write_keys(new, sandbox=True)
    (keys / "alipay_new_private_key.pem").write_bytes(
        (new / "alipay_private_key.pem").read_bytes())
    (keys / "alipay_public_keys.pem").write_bytes(
        (keys / "alipay_public_key.pem").read_bytes()
        + (new / "alipay_public_key.pem").read_bytes())
    return keys


@process_fixture(scope="module")
def key_stack(switch_keys: Path, log_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(switch_keys, log_dir, tmp_path_factory.mktemp("key-stack"), "keyswitch",
                      {"ALIPAY_PUBLIC_KEY_PATH": str(switch_keys / "alipay_public_keys.pem")})


def test_a_switch_to_a_new_alipay_key_in_key_mode(key_stack: Stack) -> None:
    shop = key_stack.buyer()
    before_id, before_url = key_stack.unpaid_order(shop, "10.00")
    after_id, after_url = key_stack.unpaid_order(shop, "11.00")
    paid = key_stack.sandbox.pay(before_url)
    assert shop.put_status(query_params(paid["return_url"])).status_code == 200
    key_stack.sandbox.wait_notifications(before_id)
    # Alipay switches to the new key: the sandbox, restarted on its store, signs with it.
    process = key_stack.sandbox_process
    process.stop()
    process.args[process.args.index("--alipay-private-key") + 1] = str(
        key_stack.keys / "alipay_new_private_key.pem")
    process.start()
    wait_for_port(process.port, 15)
    paid = key_stack.sandbox.pay(after_url)
    assert shop.put_status(query_params(paid["return_url"])).status_code == 200
    for order_id in (before_id, after_id):
        wait_for(lambda order_id=order_id: _paid_once(key_stack, order_id), 20)
        key_stack.sandbox.wait_notifications(order_id)
    wait_for(lambda: not key_stack.books.rows(
        "SELECT id FROM payment_paymentevent WHERE state = 'received'"), 20)
    assert key_stack.books.rows("SELECT count(*) AS n FROM payment_refusedrequest")[0]["n"] == 0
    # Each key verified what it signed, and the web's metrics say which, by the ids the
    # operators' command prints.
    done = key_stack.manage("alipay_certs")
    assert done.returncode == 0, done.stderr
    ids = re.findall(r"key-[0-9a-f]{12}", done.stdout)
    assert len(ids) == 2
    metrics = requests.get(f"{key_stack.base_url}/metrics", timeout=10).text
    for key_id in ids:
        assert re.search(
            rf'shop_alipay_signatures_verified_total{{[^}}]*key="{key_id}"[^}}]*}} [1-9]', metrics
        ), key_id
