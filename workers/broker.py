"""The broker connections of the Celery app: kombu's, with a collected connection let go whole.

A worker that loses its broker collects the connection (kombu's `Connection.collect()`: close
what can be closed, then drop the transport), and Celery 5.7 closes it once more before it
reconnects. `collect()` leaves the connection's default channel behind: on Redis that channel
was still waiting for a BRPOP reply, the read failed on the broken socket and its close stopped
there, with its Redis pools and the messages it had delivered. The second close took that
channel up again, dropped its pools, and to put the delivered messages back made a new pool
from its transport's connection details, which `collect()` had just cleared:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in kombu's `_connparams`. Not
a connection error, so Celery did not reconnect: the worker stopped (exit code 1), and honcho
stopped every process with it.

Here `collect()` drops the default channel with the transport it belongs to, so the close after
it has nothing left to close. The channel keeps its pools: a task that finishes after the
reconnect acknowledges its message through them. What it delivered and nobody acknowledged is
given again after the visibility timeout (Redis) or at once (RabbitMQ), and the sweeper finds
the events of wake-ups that were lost.
"""
from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection as KombuConnection


class Connection(KombuConnection):
    def collect(self, socket_timeout: float | None = None) -> None:
        super().collect(socket_timeout)  # type: ignore[misc]  # not in kombu's stubs
        self._default_channel: Any = None  # it went with the transport


class AMQP(CeleryAMQP):
    """The Celery app's messaging: its connections are the ones above."""

    Connection = Connection
