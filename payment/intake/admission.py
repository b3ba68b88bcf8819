"""How many intake requests a web process works on at once: past INTAKE_MAX_ACTIVE, a new one is
refused at once (503 with Retry-After; `fail` to Alipay, which delivers it again) instead of
joining a queue.

An event loop that is handed more requests than its CPU can serve gives each a slice of it in
turn: every request slows down together, and under a steady excess the wait grows until
clients time out (an open-loop load at twice the capacity: seconds, and growing). Bounding the
requests worked on bounds that wait (Little's law: the latency past capacity is about the
limit over the throughput), and a refusal costs a fraction of the work it saves: it is decided
before the throttle's Redis round trip, the parsing, the signature and the database.

A return that waits for the workers (up to RETURN_WAIT_SECONDS, on Redis, no CPU) is not work:
it leaves the count when its event is stored and its wait begins. So is a body still arriving
(bounded by BODY_TIMEOUT_SECONDS): the count starts once the body is read.

uvicorn's own `limit_concurrency` is not used: it counts open connections and running tasks,
so keep-alive clients that send nothing and returns that only wait take up its places, and
it answers without Retry-After.
"""
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from payment import metrics
from payment.intake import throttle

logger = logging.getLogger(__name__)


class Busy(Exception):
    """The process works on INTAKE_MAX_ACTIVE intake requests already: nothing was read."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("The payment service is busy; try again in a moment.")
        self.retry_after = retry_after


class Admission:
    """The intake requests this process works on. A lock, because the Django entry
    (infra/asgi_bridge.py) runs the intake on several threads, each with its own loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    @contextmanager
    def working(self, source: str) -> Iterator[None]:
        """Count the block as work; raise Busy when the limit is reached (nothing counted)."""
        limit = settings.INTAKE_MAX_ACTIVE
        with self._lock:
            if limit and self.active >= limit:
                admitted = False
            else:
                self.active += 1
                admitted = True
        if not admitted:
            raise _busy(source)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside working(): the block waits without working (a return waiting for the
        workers); its place is free meanwhile, and taken back after, whatever the count."""
        with self._lock:
            self.active -= 1
        try:
            yield
        finally:
            with self._lock:
                self.active += 1


def _busy(source: str) -> Busy:
    metrics.event_received(source=source, outcome="busy")
    if throttle.log_once(f"busy:{source}"):
        logger.warning("%s refused: %s intake requests in this process already (503)", source,
                       settings.INTAKE_MAX_ACTIVE)
    return Busy(settings.INTAKE_RETRY_AFTER_SECONDS)


ADMISSION = Admission()
