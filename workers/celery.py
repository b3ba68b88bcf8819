"""The Celery app: queues, routes and the beat schedule.

`celery -A workers worker` and `celery -A workers beat`. Live payments run on the `payments`
queue; reconciliation and expiry on `reconcile`, so that bulk work never delays a buyer.
"""
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu import Queue

from workers import observability  # noqa: F401  (request ids in task headers; worker metrics)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("payments"), Queue("reconcile"))
app.conf.task_default_queue = "payments"
app.conf.task_routes = {
    "payment.tasks.events_process_task": {"queue": "payments"},
    "payment.tasks.payment_refund_task": {"queue": "payments"},
    "payment.tasks.refund_process_task": {"queue": "payments"},
    "payment.tasks.*": {"queue": "reconcile"},
}
app.conf.worker_hijack_root_logger = False
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _startup_require(**kwargs: Any) -> None:
    from payment.alipay import keys_require
    from shop.checks import checks_require

    keys_require()
    checks_require()


@signals.worker_process_init.connect
def _worker_process_init(**kwargs: Any) -> None:
    from payment.alipay import client_warm

    client_warm()


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
