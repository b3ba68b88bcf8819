"""`make run`'s server-less broker: kombu's filesystem transport, with short waits.

A worker on this transport runs Celery's blocking loop (not the event loop of Redis and
RabbitMQ), which asks the transport for up to 2 s of messages at a time and looks for a
shutdown only between two asks; the transport itself sleeps between polls of its folders.
"""
from typing import Any

from kombu.transport import filesystem


class Transport(filesystem.Transport):
    """Each wait for messages ends after one poll interval, so Ctrl-C is seen at once."""

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # Folders, not a server: no default host. kombu's virtual transports default to
        # 'localhost', and every connection made from a `filesystem://` URL (which has no
        # host) warned "No hostname was supplied" when it fell back to it.
        return {"port": self.default_port}

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        if timeout is not None and self.polling_interval:
            timeout = min(timeout, self.polling_interval)
        return super().drain_events(connection, timeout=timeout)
