"""A worker starts without warnings about its broker connection: kombu's "No hostname was
supplied" came from every connection the server-less filesystem broker made."""
import os
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import ManagedProcess, free_port, python_args

NO_HOSTNAME = "No hostname was supplied"


def _default_env(tmp_path: Path, keys: Path) -> dict[str, str]:
    """The settings' defaults (SQLite, the filesystem broker), with their files in tmp_path."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("DATABASE_", "CELERY_", "PAYMENT_REDIS"))}
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_FOLDER": str(tmp_path / "broker"),
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(keys / "app_private_key.pem"),
        "ALIPAY_PUBLIC_KEY_PATH": str(keys / "alipay_public_key.pem"),
        "LOG_LEVEL": "INFO",
    })
    return env


def _worker_log(name: str, env: dict[str, str], log_dir: Path) -> str:
    # A queue of its own: on the shared test Redis it must not take the session's messages.
    queue = f"{name}-{free_port()}"
    worker = ManagedProcess(queue, python_args(
        "-m", "celery", "-A", "workers", "worker", "--queues", queue, "--concurrency", "1",
        "--hostname", f"{queue}@%h", "--without-mingle", "--without-gossip",
        "--without-heartbeat", "--loglevel", "INFO",
    ), env, log_dir).start()
    try:
        worker.wait_log("ready.", timeout=60)
    finally:
        worker.stop()
    return worker.log_text()


@pytest.mark.slow
def test_worker_on_the_default_filesystem_broker_logs_no_hostname_warning(
    tmp_path: Path, dev_keys: Path, log_dir: Path
) -> None:
    log = _worker_log("quiet-filesystem", _default_env(tmp_path, dev_keys), log_dir)
    assert "workers.filesystem:Transport" in log  # the default broker it was meant to use
    assert NO_HOSTNAME not in log, log


@pytest.mark.slow
def test_worker_on_redis_logs_no_hostname_warning(
    tmp_path: Path, dev_keys: Path, log_dir: Path
) -> None:
    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://...")
    env = {**_default_env(tmp_path, dev_keys), "CELERY_BROKER_URL": url}
    log = _worker_log("quiet-redis", env, log_dir)
    assert NO_HOSTNAME not in log, log


def test_a_pool_process_ended_by_a_stop_is_a_warning_and_one_killed_stays_an_error() -> None:
    """A stop's SIGTERM reaches a worker's whole process group: a pool process may end before
    its main process takes the signal, and billiard logged that as an ERROR."""
    import logging

    import billiard.util

    from workers.shutdown import _pool_stop_level

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = billiard.util.get_logger()
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    filters = list(logger.filters)
    try:
        _pool_stop_level()
        for status in ("signal 15 (SIGTERM)", "signal 9 (SIGKILL)", "exitcode 1"):
            billiard.util.error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 1, status)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.filters[:] = filters

    assert [(record.getMessage(), record.levelname) for record in records] == [
        ("Process 'ForkPoolWorker-1' pid:1 exited with 'signal 15 (SIGTERM)'", "WARNING"),
        ("Process 'ForkPoolWorker-1' pid:1 exited with 'signal 9 (SIGKILL)'", "ERROR"),
        ("Process 'ForkPoolWorker-1' pid:1 exited with 'exitcode 1'", "ERROR"),
    ]
