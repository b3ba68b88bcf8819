"""A whole stack for the benchmarks: PostgreSQL database, Redis, sandbox, gunicorn, workers.

Every process is real and runs from this checkout; the database `bench_payments` is made
afresh each run. Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
"""
import atexit
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    wait_for_port,
)

DB_NAME = "bench_payments"
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


class Stack:
    def __init__(self, **env_overrides: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.keys = self.tmp / "keys"
        self.sandbox_port = free_port()
        self.web_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.processes: list[ManagedProcess] = []
        self.env = {
            **os.environ,
            "DATABASE_URL": DATABASE_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "ALIPAY_APPID": APP_ID,
            "ALIPAY_SELLER_ID": SELLER_ID,
            "ALIPAY_GATEWAY": f"{self.sandbox_url}/gateway.do",
            "ALIPAY_APP_PRIVATE_KEY_PATH": str(self.keys / "app_private_key.pem"),
            "ALIPAY_PUBLIC_KEY_PATH": str(self.keys / "alipay_public_key.pem"),
            "ALIPAY_RETURN_URL": f"{self.web_url}/pay_success.html",
            "ALIPAY_NOTIFY_URL": f"{self.web_url}/payment/alipay/notify/",
            "LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
            "no_proxy": "127.0.0.1,localhost",
            **env_overrides,
        }
        os.environ.update(self.env)
        # Children run in their own sessions; a SIGTERM (timeout, Ctrl-C) must still stop them.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def prepare(self) -> None:
        from alipay_sandbox.keys import write_dev_keys

        self.keys.mkdir()
        write_dev_keys(self.keys)
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB_NAME],
                       check=True)
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB_NAME], check=True)
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env,
                       check=True)
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
        django.setup()

    def start_sandbox(self, *extra: str) -> None:
        self._start("sandbox", [
            sys.executable, "-m", "alipay_sandbox", "--port", str(self.sandbox_port),
            "--control", "--store", str(self.tmp / "sandbox.sqlite3"),
            "--alipay-private-key", str(self.keys / "alipay_private_key.pem"),
            "--app-public-key", str(self.keys / "app_public_key.pem"),
            "--app-id", APP_ID, "--seller-id", SELLER_ID, *extra,
        ])
        wait_for_port(self.sandbox_port)

    def start_web(self, workers: int = 2, threads: int = 16) -> None:
        self._start("web", [
            sys.executable, "-m", "gunicorn", "shop.wsgi", "--bind",
            f"127.0.0.1:{self.web_port}", "--worker-class", "gthread", "--workers", str(workers),
            "--threads", str(threads), "--log-level", "warning",
        ])
        wait_for_port(self.web_port)

    def start_workers(self, concurrency: int = 4, queues: str = "payments,reconcile",
                      name: str = "worker", **env: str) -> ManagedProcess:
        process = self._start(name, [
            sys.executable, "-m", "celery", "-A", "workers", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--without-mingle", "--without-gossip",
            "--hostname", f"{name}-{free_port()}@%h", "--loglevel", "INFO",
        ], **env)
        process.wait_log("ready.", timeout=60)
        return process

    def _start(self, name: str, args: list[str], **env: str) -> ManagedProcess:
        process = ManagedProcess(name, args, {**self.env, **env}, self.tmp).start()
        self.processes.append(process)
        return process

    def sandbox_control(self) -> Any:
        from alipay_sandbox.client import SandboxControl

        return SandboxControl(self.sandbox_url)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> "Stack":
        atexit.register(self.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
