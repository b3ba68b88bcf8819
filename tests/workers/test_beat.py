"""Beat on two hosts: two `celery beat` processes side by side send each periodic job once per
interval, and when the one sending is killed the other goes on within an interval plus the lock
timeout. The runs are counted where they happen: in the log of a real `celery worker`."""
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import broker_url
from tests.support import ROOT, ManagedProcess, free_port, python_args

INTERVAL = 2.0
LOCK_TIMEOUT = 3
LOOP = 0.5
# Every job on an interval schedule (the bill reconciliation is a daily crontab).
JOBS = (
    "payment.tasks.events_sweep_task",
    "payment.tasks.reconcile_dispatch_task",
    "payment.tasks.orders_expire_dispatch_task",
    "payment.tasks.records_prune_task",
)
RECEIVED = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO \S+ Task ([\w.]+)\[[-\w]+\] received$",
    re.MULTILINE,
)


def _runs(worker_log: str) -> dict[str, list[float]]:
    """When the worker received each job, by task name (log times are UTC)."""
    runs: dict[str, list[float]] = defaultdict(list)
    for stamp, task in RECEIVED.findall(worker_log):
        runs[task].append(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp())
    return {task: sorted(times) for task, times in runs.items()}


def _between(times: list[float], start: float, end: float) -> list[float]:
    return [moment for moment in times if start <= moment < end]


@pytest.fixture
def beat_env(worker_env: dict[str, str]) -> Iterator[dict[str, str]]:
    prefix = f"beat-test-{time.time_ns()}:"
    yield {
        **worker_env,
        **{name: str(INTERVAL) for name in (
            "PAYMENT_SWEEP_INTERVAL_SECONDS", "RECONCILE_INTERVAL_SECONDS",
            "ORDER_EXPIRE_INTERVAL_SECONDS", "PAYMENT_RETENTION_INTERVAL_SECONDS")},
        "CELERY_BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        "CELERY_BEAT_MAX_LOOP_INTERVAL": str(LOOP),
        "CELERY_BEAT_KEY_PREFIX": prefix,
    }
    client = redis.Redis.from_url(broker_url())
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def _beat(name: str, env: dict[str, str], log_dir: Path, tmp_path: Path) -> ManagedProcess:
    return ManagedProcess(name, python_args(
        "-m", "celery", "-A", "workers", "beat", "--schedule", str(tmp_path / name),
        "--loglevel", "INFO"), env, log_dir).start()


def _scheduler(**environment: str) -> str:
    code = ("import django; django.setup(); from workers.celery import app; "
            "print(app.conf.beat_scheduler)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings",
             **environment},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


@pytest.mark.slow
def test_beat_takes_the_lock_wherever_there_is_redis_and_keeps_a_file_without() -> None:
    locked = "workers.beat:LockedScheduler"
    assert _scheduler(CELERY_BROKER_URL="redis://127.0.0.1:6379/0") == locked
    # RabbitMQ as the broker: the wake-ups' Redis holds the lock.
    assert _scheduler(CELERY_BROKER_URL="amqp://guest@127.0.0.1//",
                      PAYMENT_REDIS_URL="redis://127.0.0.1:6379/1") == locked
    # `make run`: no Redis, one beat and its schedule file.
    assert _scheduler() == "celery.beat:PersistentScheduler"
    assert _scheduler(CELERY_BROKER_URL="amqp://guest@127.0.0.1//") == (
        "celery.beat:PersistentScheduler")


@pytest.mark.django_db(transaction=True)
def test_two_beats_send_each_job_once_per_interval_and_the_survivor_takes_over(
    beat_paused: None, exclusive_workers: Any, beat_env: dict[str, str], log_dir: Path,
    tmp_path: Path,
) -> None:
    worker = exclusive_workers(f"beat-jobs-{time.time_ns()}", concurrency=2)
    first = _beat(f"beat-first-{time.time_ns()}", beat_env, log_dir, tmp_path)
    second: ManagedProcess | None = None
    try:
        # The second starts once the first holds the lock: started together, either may win.
        first.wait_log("beat: Acquired lock", timeout=60)
        second = _beat(f"beat-second-{time.time_ns()}", beat_env, log_dir, tmp_path)
        second.wait_log("beat: Starting", timeout=60)
        time.sleep(2 * LOOP)  # the second is past its start-up, asking for the lock
        both_from = time.time()
        time.sleep(5 * INTERVAL)
        both_until = time.time()
        assert "Acquired lock" not in second.log_text()

        first.kill()  # SIGKILL: no release, its lock is left to expire
        killed_at = time.time()
        second.wait_log("beat: Acquired lock", timeout=LOCK_TIMEOUT + INTERVAL + 10)
        time.sleep(LOCK_TIMEOUT + LOOP + 4 * INTERVAL)
        until = time.time()
    finally:
        first.kill()
        if second is not None:
            second.stop()

    runs = _runs(worker.log_text())
    for job in JOBS:
        times = runs.get(job, [])
        # While both ran: one run per interval, not one per beat.
        assert 4 <= len(_between(times, both_from, both_until)) <= 6, (job, times)
        # Never two runs of a job within one interval, the takeover included.
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 0.75 * INTERVAL, (job, gaps)
        # The survivor took over within an interval plus the lock's timeout...
        after_kill = _between(times, killed_at, until)
        assert after_kill, job
        assert after_kill[0] - killed_at <= INTERVAL + LOCK_TIMEOUT + LOOP + 1.0, (
            job, after_kill[0] - killed_at)
        # ...and goes on once per interval.
        last_stretch = _between(times, until - 4 * INTERVAL, until)
        assert 3 <= len(last_stretch) <= 5, (job, last_stretch)


@pytest.mark.django_db(transaction=True)
def test_a_beat_whose_lock_and_schedule_redis_lost_takes_them_again(
    beat_paused: None, exclusive_workers: Any, beat_env: dict[str, str], log_dir: Path,
    tmp_path: Path,
) -> None:
    worker = exclusive_workers(f"beat-jobs-{time.time_ns()}", concurrency=2)
    beat = _beat(f"beat-alone-{time.time_ns()}", beat_env, log_dir, tmp_path)
    try:
        beat.wait_log("beat: Acquired lock", timeout=60)
        time.sleep(INTERVAL + LOOP)
        client = redis.Redis.from_url(broker_url())
        # As a Redis restarted without its data: the lock and the schedule are gone.
        client.delete(*client.scan_iter(match=f"{beat_env['CELERY_BEAT_KEY_PREFIX']}*"))
        lost_at = time.time()
        beat.wait_log("beat: took the lock", timeout=10)
        time.sleep(3 * INTERVAL + LOOP)
        assert beat.proc is not None and beat.proc.poll() is None
        until = time.time()
    finally:
        beat.stop()

    assert "lost the lock" in beat.log_text()
    runs = _runs(worker.log_text())
    for job in JOBS:
        assert len(_between(runs.get(job, []), lost_at, until)) >= 2, (job, runs.get(job))


@pytest.mark.slow
def test_a_beat_started_while_its_redis_is_away_waits_for_it(
    beat_env: dict[str, str], log_dir: Path, tmp_path: Path,
) -> None:
    port = free_port()
    env = {**beat_env, "CELERY_BEAT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    beat = _beat(f"beat-early-{time.time_ns()}", env, log_dir, tmp_path)
    server = ManagedProcess(f"beat-redis-{port}", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path)], dict(os.environ), log_dir)
    try:
        beat.wait_log("beat: Starting", timeout=60)
        time.sleep(3)
        assert beat.proc is not None and beat.proc.poll() is None, beat.log_text()[-3000:]
        server.start()
        beat.wait_log("beat: Acquired lock", timeout=30)
        time.sleep(INTERVAL + LOOP)
        assert beat.proc.poll() is None, beat.log_text()[-3000:]
    finally:
        beat.stop()
        server.stop()
    assert "Traceback" not in beat.log_text()
