"""The brokers the worker tests run on: the session's Redis, or a private RabbitMQ node.

A private node has its own name, ports and data folder, so that a test may stop it and start
it again without touching a RabbitMQ server someone else uses.
"""
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kombu import Connection, Queue

from payment.tasks import events_process_task
from tests.support import ManagedProcess, free_port, wait_for_port
from workers.celery import task_queues

# Debian's /usr/sbin/rabbitmq-server switches to the system's rabbitmq user and its folders;
# the script it wraps runs a node as whoever starts it.
RABBITMQ_SERVERS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/local/sbin/rabbitmq-server")


def rabbitmq_server() -> str:
    for candidate in (*RABBITMQ_SERVERS, shutil.which("rabbitmq-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("the RabbitMQ tests need rabbitmq-server: apt-get install rabbitmq-server")


class RabbitMQNode:
    """A RabbitMQ node of a test's own; its messages survive a stop and start."""

    def __init__(self, directory: Path, log_dir: Path, name: str = "rabbitmq") -> None:
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        config = directory / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(directory),  # the node's Erlang cookie
            "RABBITMQ_NODENAME": f"{name}-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "node.pid"),
            "RABBITMQ_LOGS": "-",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        self.process = ManagedProcess(name, [rabbitmq_server()], env, log_dir)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> "RabbitMQNode":
        self.process.start()
        wait_for_port(self.port, timeout=90)  # the listener opens once the node has booted
        return self

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def kill(self) -> None:
        self.process.kill()


class PrivateRedis:
    """A Redis of a test's own that keeps its data (append-only file) across a stop."""

    def __init__(self, directory: Path, log_dir: Path, name: str = "private-redis") -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed for this test"
        self.directory = directory
        self.port = free_port()
        self.process = ManagedProcess(name, [
            server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--dir", str(directory)], {}, log_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.process.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], check=False)
        assert self.process.proc is not None
        self.process.proc.wait(10)

    def kill(self) -> None:
        self.process.kill()

    def restart(self, *, empty: bool = False, down_for: float = 0.0) -> None:
        """Stopped, and started again after `down_for` seconds; `empty`: without the data it
        held."""
        self.stop()
        if empty:
            shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        time.sleep(down_for)
        self.start()


class PrivateBroker(Protocol):
    @property
    def url(self) -> str: ...
    def start(self) -> "PrivateBroker": ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...


def private_broker(kind: str, directory: Path, log_dir: Path) -> PrivateBroker:
    if kind == "rabbitmq":
        return RabbitMQNode(directory, log_dir, "private-rabbitmq")
    return PrivateRedis(directory, log_dir)


@dataclass(frozen=True)
class BrokerUnderTest:
    """A broker the worker tests run on, and what its processes need to use it."""

    kind: str  # "redis" or "rabbitmq"
    url: str
    env: dict[str, str] = field(default_factory=dict)  # on top of worker_env

    @classmethod
    def rabbitmq(cls, node: RabbitMQNode) -> "BrokerUnderTest":
        """A RabbitMQ node with no Redis at all (PAYMENT_REDIS_URL empty: waits and throttles
        use their fallbacks)."""
        return cls("rabbitmq", node.url, {"CELERY_BROKER_URL": node.url, "PAYMENT_REDIS_URL": ""})

    def _queue(self, name: str) -> Queue:
        return {queue.name: queue for queue in task_queues(self.kind)}[name]

    def wake(self, event_ids: list[int] | None = None, countdown: float | None = None) -> None:
        """Publish a wake-up (for these events only, if given) to this broker, as the web's
        intake does to its own; with a countdown, as a retry is published."""
        with Connection(self.url, connect_timeout=5) as connection:
            events_process_task.apply_async((event_ids,), connection=connection,
                                            queue=self._queue("payments"), countdown=countdown)

    def queued(self, name: str = "payments") -> int:
        """Messages waiting in a queue (not those a worker holds)."""
        with Connection(self.url, connect_timeout=5) as connection:
            declared = self._queue(name).bind(connection.channel()).queue_declare()
            return int(declared.message_count)

    def purge(self, name: str = "payments") -> None:
        with Connection(self.url, connect_timeout=5) as connection:
            queue = self._queue(name).bind(connection.channel())
            queue.declare()
            queue.purge()
