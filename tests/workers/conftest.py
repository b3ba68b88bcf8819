"""The worker tests' brokers: the fault tests run once on Redis and once on RabbitMQ."""
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ManagedProcess, process_fixture, python_args
from tests.workers.brokers import BrokerUnderTest, RabbitMQNode


@process_fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory,
                  log_dir: Path) -> Iterator[RabbitMQNode]:
    """A private RabbitMQ node for the session's RabbitMQ runs."""
    node = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), log_dir).start()
    yield node
    node.stop()


@process_fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, worker_env: dict[str, str]) -> BrokerUnderTest:
    """The broker a test's workers use: the session's Redis, or RabbitMQ (a private node)
    with no Redis at all. A process fixture itself: the node is asked for by name, at run time."""
    if request.param == "redis":
        return BrokerUnderTest("redis", worker_env["CELERY_BROKER_URL"])
    return BrokerUnderTest.rabbitmq(request.getfixturevalue("rabbitmq_node"))


@process_fixture
def broker_with_beat(request: pytest.FixtureRequest, broker: BrokerUnderTest,
                     worker_env: dict[str, str], log_dir: Path,
                     tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """The broker, with a beat (sweeper, reconciliation, expiry) publishing to it."""
    if broker.kind == "redis":
        request.getfixturevalue("celery_beat")
        yield broker
        return
    beat = ManagedProcess(f"{broker.kind}-beat", python_args(
        "-m", "celery", "-A", "workers", "beat", "--schedule", str(tmp_path / "beat"),
        "--loglevel", "INFO"), {**worker_env, **broker.env}, log_dir).start()
    try:
        beat.wait_log("beat: Starting", timeout=60)
        yield broker
    finally:
        beat.stop()
