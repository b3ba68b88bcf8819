"""Celery's part in metrics and logs, connected when the Celery app is loaded (every process).

- Request ids: a task published while a request id is set (a web request, or a task that
  has one) carries it in its message headers; the worker sets it again for the task's run, so
  the task's lines, and the tasks it publishes, carry it too.
- Metrics (infra/metrics.py): a worker's main process makes the folder its prefork children
  write their samples to, serves them on WORKER_METRICS_PORT once the pool is up, and removes
  the folder at shutdown; a child that exits is marked dead (its counters stay counted).
"""
import logging
from typing import Any

from celery import signals

from infra import logs, metrics

logger = logging.getLogger(__name__)

HEADER = "x_request_id"


@signals.before_task_publish.connect
def _request_id_send(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    current = logs.request_id()
    if current is not None and headers is not None:
        headers.setdefault(HEADER, current)


_tokens: dict[str, tuple[Any, Any]] = {}


@signals.task_prerun.connect
def _request_id_restore(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    sent = task.request.get(HEADER) if task is not None else None
    # The header was set by our own web or worker (_request_id_send), never by a client.
    request = logs.REQUEST_ID.set(logs.request_id_accept(sent, trusted=True) if sent else None)
    task_token = logs.TASK_ID.set(task_id)
    if task_id is not None:
        _tokens[task_id] = (request, task_token)


@signals.task_postrun.connect
def _request_id_clear(task_id: str | None = None, **kwargs: Any) -> None:
    tokens = _tokens.pop(task_id or "", None)
    if tokens is not None:
        logs.REQUEST_ID.reset(tokens[0])
        logs.TASK_ID.reset(tokens[1])


@signals.celeryd_init.connect
def _worker_metrics_dir(instance: Any = None, **kwargs: Any) -> None:
    """The worker's main process, before its pool starts: a fresh folder for its samples."""
    from django.conf import settings

    metrics.multiprocess_dir_create("worker", base=settings.METRICS_DIR)
    if settings.LOG_FORMAT == "json" and instance is not None:
        # The start-up banner is printed, not logged: it would break one-object-per-line.
        instance.quiet = True


@signals.worker_ready.connect
def _worker_metrics_serve(**kwargs: Any) -> None:
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        metrics.worker_server_start(address=settings.WORKER_METRICS_ADDRESS,
                                    port=settings.WORKER_METRICS_PORT)


@signals.worker_shutdown.connect
def _worker_metrics_stop(**kwargs: Any) -> None:
    metrics.worker_server_stop()
    metrics.multiprocess_dir_remove()


@signals.worker_process_shutdown.connect
def _worker_child_dead(pid: int | None = None, **kwargs: Any) -> None:
    if pid is not None:
        metrics.process_dead(pid)
