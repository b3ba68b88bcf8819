"""The Celery app: queues, routes and the beat schedule.

`celery -A workers worker` and `celery -A workers beat`. Live payments run on the `payments`
queue; reconciliation and expiry on `reconcile`, so that bulk work never delays a buyer.
The same routes serve Redis and RabbitMQ; on RabbitMQ the queues are quorum queues.
"""
import functools
import math
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals
from django.conf import settings
from kombu import Exchange, Queue

# Connected for their signals: request ids in task headers and worker metrics; a cold shutdown
# run in the worker's event loop.
from workers import observability, shutdown  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

QUEUE_NAMES = ("payments", "reconcile")


def task_queues(broker_kind: str) -> tuple[Queue, ...]:
    """The task queues as the broker keeps them.

    RabbitMQ: quorum queues (durable and replicated; they refuse priorities, exclusivity and
    a global prefetch), each behind a topic exchange of its own name, which native delayed
    delivery needs to route a countdown's message back to its queue.
    """
    if broker_kind != "rabbitmq":
        return tuple(Queue(name) for name in QUEUE_NAMES)
    return tuple(
        Queue(name, Exchange(name, type="topic", durable=True), routing_key=name, durable=True,
              queue_arguments={"x-queue-type": "quorum"})
        for name in QUEUE_NAMES
    )


class WorkersApp(Celery):
    """Celery, with countdowns rounded up to whole seconds on RabbitMQ, and broker connections
    that a lost broker does not turn into a worker's exit (workers/broker.py).

    Native delayed delivery counts whole seconds and refuses a countdown between 0 and 1 (the
    publish raises); rounding up also keeps a retry from arriving before its event is due.
    The tasks delay with countdowns only, never an `eta`.
    """

    amqp_cls = "workers.broker:AMQP"
    whole_second_delays = False

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,  # type: ignore[override]
                  countdown: float | None = None, **options: Any) -> Any:
        if self.whole_second_delays and countdown is not None and countdown > 0:
            countdown = math.ceil(countdown)
        return super().send_task(name, args, kwargs, countdown, **options)


app = WorkersApp("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The Celery app is the worker's entry point: the settings are read when it is made.
app.conf.task_queues = task_queues(settings.BROKER_KIND)
app.whole_second_delays = settings.BROKER_KIND == "rabbitmq"
app.conf.task_default_queue = "payments"
app.conf.task_routes = {
    "payment.tasks.events_process_task": {"queue": "payments"},
    "payment.tasks.payment_refund_task": {"queue": "payments"},
    "payment.tasks.refund_process_task": {"queue": "payments"},
    "payment.tasks.*": {"queue": "reconcile"},
}
app.conf.worker_hijack_root_logger = False
app.autodiscover_tasks()


@functools.cache
def startup_require() -> None:
    """Stop the process, naming each problem, when its keys or settings are unusable; once per
    process. Beat's Redis scheduler calls it before it writes the schedule (workers/beat.py):
    Celery builds the scheduler before `beat_init`, and a beat refused there had already
    replaced the running beat's schedule with its own."""
    from infra.checks import checks_require
    from payment.gateway import keys_require

    keys_require()
    checks_require()


@signals.worker_init.connect
@signals.beat_init.connect
def _startup_require(**kwargs: Any) -> None:
    startup_require()


@signals.worker_process_init.connect
def _worker_process_init(**kwargs: Any) -> None:
    from payment.gateway import client_warm

    client_warm()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _database_connections_check(task: Any = None, **kwargs: Any) -> None:
    """Django's check between two requests, between two tasks: a connection that failed and
    no longer answers, or is past CONN_MAX_AGE, is closed, and the next query opens another.

    Celery's Django fix-up keeps a connection for CELERY_DB_REUSE_MAX tasks whatever its
    state: one the server ended (a restart, a failover) while a query ran outside a
    transaction stayed broken, and every task of the process failed on it until then.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        return  # run inline by the caller, inside whatever transaction it holds
    from django.db import close_old_connections

    close_old_connections()


@signals.beat_init.connect
def _beat_init(**kwargs: Any) -> None:
    from django.conf import settings

    Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).parent.mkdir(parents=True, exist_ok=True)


@signals.celeryd_init.connect
@signals.beat_init.connect
@signals.import_modules.connect
def _broker_folders(**kwargs: Any) -> None:
    # The server-less default broker keeps messages in folders that must exist.
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if key in options:
            Path(str(options[key])).mkdir(parents=True, exist_ok=True)
