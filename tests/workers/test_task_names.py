"""Task names are pinned: queued messages, routes and the beat schedule name tasks, so a
function that moves must keep its name, and everything that names a task names a real one."""
import ast
import fnmatch
import inspect

from django.conf import settings

from payment import tasks
from workers.celery import app

EXPECTED = [
    "payment.tasks.bill_reconcile_task",
    "payment.tasks.bills_reconcile_dispatch_task",
    "payment.tasks.events_process_task",
    "payment.tasks.events_sweep_task",
    "payment.tasks.order_expire_task",
    "payment.tasks.orders_expire_dispatch_task",
    "payment.tasks.payment_refund_task",
    "payment.tasks.reconcile_batch_task",
    "payment.tasks.reconcile_dispatch_task",
    "payment.tasks.records_prune_task",
    "payment.tasks.refund_process_task",
]


def _registered() -> list[str]:
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def test_the_workers_register_exactly_the_pinned_task_names() -> None:
    assert _registered() == EXPECTED


def test_every_task_sets_its_name_explicitly() -> None:
    # An automatic name follows the function: moving it would strand queued messages.
    tree = ast.parse(inspect.getsource(tasks))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                "shared_task" in ast.unparse(decorator) for decorator in node.decorator_list):
            (decorator,) = node.decorator_list
            assert isinstance(decorator, ast.Call), node.name
            names = [keyword.value for keyword in decorator.keywords if keyword.arg == "name"]
            assert names and ast.literal_eval(names[0]) == f"payment.tasks.{node.name}"


def test_the_beat_schedule_and_the_routes_name_registered_tasks() -> None:
    registered = set(_registered())
    for entry, job in settings.CELERY_BEAT_SCHEDULE.items():
        assert job["task"] in registered, entry
    for pattern in app.conf.task_routes:
        assert fnmatch.filter(registered, pattern), pattern
