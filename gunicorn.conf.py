"""gunicorn settings read from the working directory by every `gunicorn` command here.

The access log shows the path without the query string: Alipay's return parameters (with
their signature) arrive in it, and logs never carry signatures or whole payloads.

Metrics: the master makes the web's folder of metric files before it starts its workers
(they inherit PROMETHEUS_MULTIPROC_DIR), tells it when a worker exits, and removes it at exit
(infra/metrics.py). Logs: gunicorn's own lines and the access log take the application's
format (JSON in production, text in development) and its clock (UTC, infra/logs.py).
"""
import os
from typing import Any

from infra import logs

access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

# The rule config/settings.py applies; gunicorn reads the environment before Django does.
_log_format = logs.log_format(configured=os.environ.get("LOG_FORMAT", ""),
                              django_env=os.environ.get("DJANGO_ENV", "development"))
logconfig_dict = logs.gunicorn_config(log_format=_log_format)


def on_starting(server: Any) -> None:
    from infra import metrics

    metrics.multiprocess_dir_create("web", base=os.environ.get("METRICS_DIR", ""))
    _one_halt(server)


def _one_halt(server: Any) -> None:
    """A worker that fails to boot (a refused start-up) halts the master, which then reaps
    the other workers: one that failed to boot too raised gunicorn's HaltServer again, from
    inside the halt, and the master ended with a traceback instead of its one clear line.
    Once halting, a failed boot is one more worker gone."""
    from gunicorn.errors import HaltServer

    reap = server.reap_workers
    halting = False

    def reap_workers() -> None:
        nonlocal halting
        try:
            reap()
        except HaltServer:
            if not halting:
                halting = True
                raise
            for pid in list(server.WORKERS):  # gunicorn raised before it let go of the pid
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    server.WORKERS.pop(pid, None)

    server.reap_workers = reap_workers


def child_exit(server: Any, worker: Any) -> None:
    from infra import metrics

    metrics.process_dead(worker.pid)


def on_exit(server: Any) -> None:
    from infra import metrics

    metrics.multiprocess_dir_remove()
