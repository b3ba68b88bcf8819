"""A whole stack for the benchmarks: PostgreSQL database, Redis, sandbox, gunicorn, workers.

Every process is real and runs from this checkout; the database (`bench_payments` unless
told otherwise) is made afresh each run. Needs PostgreSQL on 127.0.0.1:5432 and Redis on
127.0.0.1:6379, or a `redis-server` binary for a private Redis (`start_redis`).
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

from alipay_sandbox.testing import start_sandbox  # noqa: E402
from tests.support import (  # noqa: E402
    APP_ID,
    SELLER_ID,
    ManagedProcess,
    free_port,
    procfile_command,
    wait_for_port,
)

DB_NAME = "bench_payments"
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


class Stack:
    def __init__(self, db_name: str = DB_NAME, **env_overrides: str) -> None:
        self.db_name = db_name
        database_url = (DATABASE_URL if db_name == DB_NAME
                        else f"postgres://postgres@127.0.0.1:5432/{db_name}")
        self.redis_url = REDIS_URL
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.keys = self.tmp / "keys"
        self.sandbox_port = free_port()
        self.web_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.processes: list[ManagedProcess] = []
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
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
            # The benchmarks place every order for one user, far past the per-account cap.
            "ORDER_MAX_UNPAID": "0",
            **env_overrides,
        }
        os.environ.update(self.env)
        # Children run in their own sessions; a SIGTERM (timeout, Ctrl-C) must still stop them.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def prepare(self) -> None:
        from payment.gateway.keys import write_keys

        self.keys.mkdir()
        write_keys(self.keys, sandbox=True)
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists",
                        self.db_name], check=True)
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", self.db_name],
                       check=True)
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env,
                       check=True)
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        django.setup()

    def start_sandbox(self, *extra: str) -> None:
        self.processes.append(start_sandbox(
            self.keys, self.tmp / "sandbox.sqlite3", *extra, port=self.sandbox_port,
            time_factor=1.0, app_id=APP_ID, seller_id=SELLER_ID, log_dir=self.tmp,
            env=self.env,
        ))

    def start_web(self, workers: int = 2, threads: int = 16) -> None:
        self._start("web", [
            sys.executable, "-m", "gunicorn", "config.wsgi", "--bind",
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

    def start_redis(self, port: int | None = None) -> None:
        """A private redis-server on `port` (a free one if None), for the broker; call before
        prepare().

        Nothing else on the machine shares it, so it may be flushed at will.
        """
        port = port or free_port()
        self._start("redis", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.tmp),
        ])
        wait_for_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.env["CELERY_BROKER_URL"] = self.redis_url
        os.environ["CELERY_BROKER_URL"] = self.redis_url

    def start_procfile(self, entry: str, name: str | None = None, extra: str = "",
                       **env: str) -> ManagedProcess:
        """Run the Procfile's line for `entry` as it is (through bash), plus `extra` arguments.

        The web line binds to this stack's port through WEB_BIND; the commands come from the
        Procfile so that the benchmark follows whatever the project deploys.
        """
        process = self._start(name or entry, procfile_command(entry, extra),
                              WEB_BIND=f"127.0.0.1:{self.web_port}", **env)
        if entry == "web":
            wait_for_port(self.web_port, timeout=60)
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


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of a process and all its descendants, read from /proc."""
    from bench.profiling import tree

    return sum(_rss(member) for member in tree(pid))


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
