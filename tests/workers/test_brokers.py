"""The broker is chosen by CELERY_BROKER_URL alone: the settings each broker gets, and on a
real RabbitMQ node quorum queues and countdowns that wait in RabbitMQ, not in a worker."""
import json
import subprocess
import sys
import textwrap

import amqp
import pytest
from kombu import Connection, Exchange, Queue

from tests.support import ROOT
from tests.workers.brokers import RabbitMQNode

CONF_SCRIPT = """
import json, django
django.setup()
from workers import celery_app as app
conf = app.conf
print(json.dumps({
    "broker_transport_options": conf.broker_transport_options,
    "result_backend_transport_options": conf.result_backend_transport_options,
    "visibility_timeout": conf.visibility_timeout,
    "soft_shutdown": [conf.worker_soft_shutdown_timeout,
                      conf.worker_enable_soft_shutdown_on_idle],
    "queues": {q.name: [q.exchange.type, q.routing_key, q.queue_arguments]
               for q in conf.task_queues},
    "routes": {name: route["queue"] for name, route in conf.task_routes.items()},
    "quorum": [conf.worker_detect_quorum_queues, conf.task_create_missing_queue_type,
               conf.broker_native_delayed_delivery_queue_type],
}))
"""


def _celery_conf(broker_url: str, **env: str) -> dict:
    """The Celery configuration a process started with this broker URL gets."""
    result = subprocess.run(
        [sys.executable, "-c", CONF_SCRIPT], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings",
                         "CELERY_BROKER_URL": broker_url, **env})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_redis_gets_one_visibility_timeout_in_the_three_places_celery_reads_it() -> None:
    conf = _celery_conf("redis://127.0.0.1:6379/0")
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 7200
    assert conf["visibility_timeout"] == 7200
    assert conf["soft_shutdown"] == [8.0, False]
    assert conf["queues"] == {"payments": ["direct", "", None],
                              "reconcile": ["direct", "", None]}

    changed = _celery_conf("redis://127.0.0.1:6379/0", CELERY_VISIBILITY_TIMEOUT="10800",
                           CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT="25")
    assert {changed["broker_transport_options"]["visibility_timeout"],
            changed["result_backend_transport_options"]["visibility_timeout"],
            changed["visibility_timeout"]} == {10800}
    assert changed["soft_shutdown"] == [25.0, False]


@pytest.mark.slow
def test_an_amqp_url_gets_quorum_queues_publisher_confirms_and_the_same_routes() -> None:
    redis = _celery_conf("redis://127.0.0.1:6379/0")
    conf = _celery_conf("amqp://guest:guest@127.0.0.1:5672//")
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    quorum = {"x-queue-type": "quorum"}
    assert conf["queues"] == {"payments": ["topic", "payments", quorum],
                              "reconcile": ["topic", "reconcile", quorum]}
    assert conf["quorum"] == [True, "quorum", "quorum"]
    assert conf["routes"] == redis["routes"]
    assert conf["routes"]["payment.tasks.events_process_task"] == "payments"
    assert conf["soft_shutdown"] == [8.0, False]


COUNTDOWN_SCRIPT = """
import json, time, django
django.setup()
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues)
from payment.tasks import events_process_task
from workers import celery_app as app

def waiting(name):
    with app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(name, passive=True).message_count

# What a worker does when it starts on quorum queues: its queues, then Celery's
# DelayedDelivery step.
with app.connection_for_write() as connection:
    for queue in app.amqp.queues.values():
        queue.bind(connection.default_channel).declare()
        queue.bind(connection.default_channel).purge()
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    for queue in app.amqp.queues.values():
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)

events_process_task.apply_async(countdown=0.4)  # a retry due in less than a second
seen = [(waiting("payments"), waiting("celery_delayed_0"))]
time.sleep(2.5)
seen.append((waiting("payments"), waiting("celery_delayed_0")))
print(json.dumps(seen))
"""


def test_rabbitmq_countdowns_wait_in_rabbitmq_quorum_queues(
    rabbitmq_node: RabbitMQNode,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COUNTDOWN_SCRIPT)], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings",
             "CELERY_BROKER_URL": rabbitmq_node.url})
    assert result.returncode == 0, result.stderr[-3000:]
    # Rounded up to one second, the message waits in RabbitMQ's one-second delay queue (no
    # worker runs), then is in the payments queue.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[0, 1], [1, 0]]

    # The task queues are quorum queues: declaring one as classic is refused.
    with Connection(rabbitmq_node.url) as connection:
        classic = Queue("payments", Exchange("payments", type="topic"), routing_key="payments",
                        queue_arguments={"x-queue-type": "classic"})
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
            classic.bind(connection.channel()).declare()
