"""Shared fixtures: throwaway keys, a sandbox process, real Celery workers, the live web app.

`make test` points DATABASE_URL at PostgreSQL and CELERY_BROKER_URL at Redis; the tests that
need workers use them for real.
"""
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from alipay_sandbox.client import SandboxControl
from alipay_sandbox.testing import start_sandbox
from payment.gateway.keys import write_keys
from tests.browser import page, reconciliation_out_of_the_way, screenshots, snap  # noqa: F401
from tests.support import (
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    ShopClient,
    free_port,
    process_env,
    process_fixture,
    procfile_command,
    python_args,
    wait_for_port,
)


@pytest.fixture(scope="session", autouse=True)
def stale_wakeups_dropped() -> None:
    """A new test database numbers its events from 1 again: wake-ups another session left in
    Redis (`payment:settled:<event id>`, kept a minute) would answer this session's waits."""
    url = settings.PAYMENT_REDIS_URL
    if not url.startswith(("redis://", "rediss://")):
        return
    client = redis.Redis.from_url(url)
    try:
        stale = list(client.scan_iter(match="payment:settled:*", count=1000))
        if stale:
            client.delete(*stale)
    except redis.ConnectionError:
        pass  # no Redis: the tests that need it say so themselves


@pytest.fixture(scope="session", autouse=True)
def flush_retried_on_deadlock() -> Iterator[None]:
    """The live workers and beat keep querying while a test's data is flushed: TRUNCATE can
    deadlock with one of their statements, and PostgreSQL may abort the flush. Try again."""
    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]

    def retried(self: TransactionTestCase) -> None:
        for attempt in range(5):
            try:
                flush(self)
                return
            except CommandError:
                if attempt == 4:
                    raise
                time.sleep(0.5)

    TransactionTestCase._fixture_teardown = retried  # type: ignore[attr-defined]
    yield
    TransactionTestCase._fixture_teardown = flush  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def static_root() -> None:
    # whitenoise warns about a missing STATIC_ROOT; the live server serves from the finders.
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    write_keys(directory, sandbox=True)
    return directory


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@process_fixture(scope="session")
def sandbox_server(
    dev_keys: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxControl]:
    store = tmp_path_factory.mktemp("sandbox") / "store.sqlite3"
    # Now and then an empty parameter, as Alipay sends and signs them.
    process = start_sandbox(dev_keys, store, "--empty-param-rate", "0.2", app_id=APP_ID,
                            seller_id=SELLER_ID, log_dir=log_dir)
    yield process.control
    process.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxControl) -> SandboxControl:
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture(scope="session")
def alipay_env(dev_keys: Path, sandbox_server: SandboxControl) -> dict[str, str]:
    """The throwaway keys and the sandbox, as the environment of the processes tests start."""
    return {
        "ALIPAY_APPID": APP_ID,
        "ALIPAY_SELLER_ID": SELLER_ID,
        "ALIPAY_GATEWAY": f"{sandbox_server.base_url}/gateway.do",
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(dev_keys / "app_private_key.pem"),
        "ALIPAY_PUBLIC_KEY_PATH": str(dev_keys / "alipay_public_key.pem"),
        "ALIPAY_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture
def alipay_settings(settings: Any, alipay_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """This process pointed at the throwaway keys and the sandbox, for this test; the env for
    child processes."""
    from payment import gateway

    for name, value in alipay_env.items():
        setattr(settings, name, Path(value) if name.endswith("_PATH") else value)
    settings.ALIPAY_TIMEOUT_SECONDS = 5.0
    gateway.clients_reset()
    yield alipay_env
    gateway.clients_reset()  # the cached client must not outlive the settings it was made with


@process_fixture
def web(live_server: Any, settings: Any, alipay_settings: dict[str, str]) -> str:
    """The live web app's base URL, with Alipay's return and notify URLs pointing at it."""
    settings.ALIPAY_RETURN_URL = f"{live_server.url}/pay_success.html"
    settings.ALIPAY_NOTIFY_URL = f"{live_server.url}/payment/alipay/notify/"
    settings.RETURN_WAIT_SECONDS = 5.0
    return str(live_server.url)


def broker_url() -> str:
    url = settings.CELERY_BROKER_URL
    assert url.startswith("redis://"), "the worker tests need CELERY_BROKER_URL=redis://..."
    return str(url)


FAST_SCHEDULE = {
    "RECONCILE_AFTER_SECONDS": 2,
    "RECONCILE_INTERVAL_SECONDS": 1,
    "PAYMENT_CLAIM_LEASE_SECONDS": 3,
    "PAYMENT_SWEEP_INTERVAL_SECONDS": 1,
    "ORDER_EXPIRE_INTERVAL_SECONDS": 1,
    # Not a beat interval: the wait before a refund is confirmed with Alipay's refund query.
    "REFUND_CONFIRM_DELAY_SECONDS": 1,
}


@pytest.fixture(scope="session")
def fast_schedule() -> dict[str, int]:
    """Beat's intervals in seconds, so that a test sees reconciliation and expiry at work: the
    workers' and beat's environment (worker_env); this process gets them per test."""
    return FAST_SCHEDULE


@pytest.fixture
def fast_schedule_settings(settings: Any, fast_schedule: dict[str, int]) -> None:
    """This process on the workers' fast schedule, for this test."""
    for name in ("RECONCILE_AFTER_SECONDS", "PAYMENT_CLAIM_LEASE_SECONDS",
                 "REFUND_CONFIRM_DELAY_SECONDS"):
        setattr(settings, name, float(fast_schedule[name]))


@pytest.fixture(autouse=True)
def settings_of_the_processes(request: pytest.FixtureRequest) -> None:
    """A test whose processes run with the sandbox's keys or beat's fast schedule (worker_env)
    sees the same settings in this process, for the test only."""
    if "alipay_env" in request.fixturenames:
        request.getfixturevalue("alipay_settings")
    if "fast_schedule" in request.fixturenames:
        request.getfixturevalue("fast_schedule_settings")


@pytest.fixture(scope="session")
def worker_env(
    django_db_setup: Any, django_db_blocker: Any, alipay_env: dict[str, str],
    fast_schedule: dict[str, int],
) -> Iterator[dict[str, str]]:
    """Environment for worker processes: the test database, the test broker, the sandbox."""
    from django.db import connection

    db = connection.settings_dict
    assert db["ENGINE"] == "django.db.backends.postgresql", "the worker tests need PostgreSQL"
    yield process_env(
        **alipay_env,
        DATABASE_URL=(
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
            f"{db['NAME']}"
        ),
        CELERY_BROKER_URL=broker_url(),
        no_proxy="127.0.0.1,localhost",
        LOG_LEVEL="INFO",
        **{name: str(value) for name, value in fast_schedule.items()},
    )
    # Child processes are gone by now; their sessions must not keep the test database alive.
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def worker_process(env: dict[str, str], log_dir: Path, name: str = "worker",
                   concurrency: int = 4, queues: str = "payments,reconcile") -> ManagedProcess:
    return ManagedProcess(
        name,
        python_args(
            "-m", "celery", "-A", "workers", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--hostname", f"{name}-{free_port()}@%h",
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
        ),
        env, log_dir,
    )


@process_fixture(scope="session")
def celery_workers(worker_env: dict[str, str], log_dir: Path) -> Iterator[ManagedProcess]:
    """Real `celery worker` processes consuming from Redis for the whole session."""
    redis.Redis.from_url(broker_url()).flushdb()
    worker = worker_process(worker_env, log_dir).start()
    worker.wait_log("ready.", timeout=60)
    yield worker
    worker.stop()


@process_fixture
def exclusive_workers(
    celery_workers: ManagedProcess, worker_env: dict[str, str], log_dir: Path
) -> Iterator[Any]:
    """Stop the session's worker; the test starts (and may kill) its own."""
    celery_workers.stop()
    started: list[ManagedProcess] = []

    def start(name: str, concurrency: int = 4, **env: str) -> ManagedProcess:
        process = worker_process({**worker_env, **env}, log_dir, name, concurrency).start()
        process.wait_log("ready.", timeout=60)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    offset = len(celery_workers.log_text())
    celery_workers.start()
    celery_workers.wait_log("ready.", timeout=60, start_at=offset)


@process_fixture(scope="session")
def celery_beat(worker_env: dict[str, str], log_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A real `celery beat` running the sweep, reconciliation and expiry schedules."""
    schedule = tmp_path_factory.mktemp("beat") / "schedule"
    beat = ManagedProcess(
        "beat",
        python_args("-m", "celery", "-A", "workers", "beat", "--schedule", str(schedule),
                    "--loglevel", "INFO"),
        worker_env, log_dir,
    ).start()
    beat.wait_log("beat: Starting", timeout=60)
    yield beat
    beat.stop()


@process_fixture
def beat_paused(celery_beat: ManagedProcess) -> Iterator[None]:
    """No scheduled sweep, reconciliation or expiry while the test drives those services itself."""
    celery_beat.stop()
    time.sleep(1.5)  # a run beat sent just before is finished by the worker
    yield
    offset = len(celery_beat.log_text())
    celery_beat.start()
    celery_beat.wait_log("beat: Starting", timeout=60, start_at=offset)


@pytest.fixture
def shop(web: str, sandbox: SandboxControl) -> ShopClient:
    return ShopClient(web)


ASGI_WEB_APPLICATION_NAME = "asgi-web"


@process_fixture(scope="session")
def asgi_web(worker_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """The Procfile's web process (gunicorn with uvicorn workers, the ASGI fast path) on the
    test database and broker."""
    port = free_port()
    # The settings' own defaults otherwise: development mode, DEBUG off, local host names.
    # Its database sessions are named (libpq's PGAPPNAME), so a test can find them.
    env = {**worker_env, "WEB_BIND": f"127.0.0.1:{port}", "RETURN_WAIT_SECONDS": "5",
           "PGAPPNAME": ASGI_WEB_APPLICATION_NAME}
    web = ManagedProcess("asgi-web", procfile_command("web"), env, log_dir).start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    web.stop()
