"""How many intake requests a web process works on at once: INTAKE_MAX_ACTIVE. A request past
it waits for a place at most INTAKE_QUEUE_SECONDS, first come first served, and is then refused
(503 with Retry-After; `fail` to Alipay, which delivers it again) instead of joining a queue
without end.

An event loop that is handed more requests than its CPU can serve gives each a slice of it in
turn: every request slows down together, and under a steady excess the wait grows until
clients time out and the server works for answers nobody reads (an open-loop load at twice the
capacity: 90% time-outs, bench/overload.py). Bounding the requests worked on, and the wait for
a place, bounds the latency of those served and of those refused; the short wait absorbs a
burst (64 returns at once) that the places free up for within milliseconds. A refusal is
decided before the throttle's Redis round trip, the parsing, the signature and the database.

A queue that does not drain is refused at once too: once a request has waited the whole
INTAKE_QUEUE_SECONDS in vain, a new one that finds no place gets its 503 now rather than
after the same wait, until a place is free again (a burst drains within milliseconds and
keeps its waits). So is a loop that has fallen behind (LATE_TICKS of its own timers in a row
fire more than INTAKE_MAX_LAG_SECONDS late: it is handed more than its CPU serves, in
connections and bytes before any request reaches this module): waiting would only add to a
lag every request already pays, and a refusal costs far less than the work it spares.

A return that waits for the workers (up to RETURN_WAIT_SECONDS, on Redis, no CPU) is not work:
it gives its place up when its event is stored and its wait begins. Those waits are bounded
apart: past INTAKE_MAX_WAITING of them a new return is refused before it is stored, since
returns arriving faster than the workers apply them would each wait longer than the last.
Nor is a body still arriving (bounded by BODY_TIMEOUT_SECONDS): a request is counted once
its body is read.

Counted per event loop: the ASGI server runs one per process. (The Django entry, used by `make
run` and the test client, runs each request on a loop of its own: unlimited there.)

uvicorn's own `limit_concurrency` is not used: it counts open connections and running tasks,
so keep-alive clients that send nothing and returns that only wait take up its places, and
it refuses at once, bursts too, without Retry-After.
"""
import asyncio
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from django.conf import settings

from payment import metrics
from payment.intake import throttle

logger = logging.getLogger(__name__)


class Busy(Exception):
    """No place came free within INTAKE_QUEUE_SECONDS: nothing of the request was read."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("The payment service is busy; try again in a moment.")
        self.retry_after = retry_after


class Admission:
    """The places of one event loop: `active` requests worked on, `waiters` for a place."""

    def __init__(self) -> None:
        self.active = 0
        self.waiting = 0  # returns waiting for the workers (paused)
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.lag = 0.0  # how late this loop's last timer fired, in seconds
        self.late_ticks = 0  # how many of its timers in a row fired later than allowed
        # Set when a request waited the whole INTAKE_QUEUE_SECONDS in vain (the queue does not
        # drain); cleared when a place is free again.
        self.shedding = False
        self._watch: asyncio.TimerHandle | None = None

    def lag_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Measure the loop's lag every LAG_TICK seconds from now on (once per loop)."""
        if self._watch is None and settings.INTAKE_MAX_LAG_SECONDS > 0:
            self._watch = loop.call_later(LAG_TICK, self._tick, loop, loop.time() + LAG_TICK)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = loop.time()
        self.lag = max(0.0, now - due)
        limit = settings.INTAKE_MAX_LAG_SECONDS
        self.late_ticks = self.late_ticks + 1 if limit > 0 and self.lag > limit else 0
        if self.waiters and self.behind():
            _behind(self)
        self._watch = loop.call_later(LAG_TICK, self._tick, loop, now + LAG_TICK)

    def behind(self) -> bool:
        """Late for LATE_TICKS timers in a row: a steady excess, not one pause (a garbage
        collection, another process taking the CPU for a moment)."""
        return self.late_ticks >= LATE_TICKS

    async def enter(self, source: str) -> None:
        """Take a place, waiting for one at most INTAKE_QUEUE_SECONDS; else raise Busy.
        Behind (the loop's lag past INTAKE_MAX_LAG_SECONDS), no waiting: Busy at once."""
        limit = settings.INTAKE_MAX_ACTIVE
        if not limit or (self.active < limit and not self.waiters):
            self.active += 1
            self.shedding = False
            return
        if self.behind():
            raise _busy(source, "the process is behind")
        if self.shedding:
            # The last wait ended in a refusal and no place has come free since: the excess
            # is steady, not a burst, and another wait would end the same way.
            raise _busy(source, "a queue that does not drain")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(future)
        timer = loop.call_later(settings.INTAKE_QUEUE_SECONDS, _expire, future)
        try:
            handed = await future  # True: a leaving request handed its place over
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.leave()  # handed a place just as it was cancelled
            elif future in self.waiters:
                self.waiters.remove(future)
            raise
        finally:
            timer.cancel()
        if not handed:
            if future in self.waiters:
                self.waiters.remove(future)
            self.shedding = True
            raise _busy(source, f"none done within {settings.INTAKE_QUEUE_SECONDS} s")

    def leave(self) -> None:
        """Give the place up: to the first request still waiting, or back."""
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(True)
                return
        self.active -= 1
        self.shedding = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside working(): the block waits without working (a return waiting for the
        workers); its place is given up meanwhile and taken back after, whatever the count,
        for the few statements that answer."""
        self.leave()
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1
            self.active += 1

    def wait_admit(self, source: str) -> None:
        """Busy when INTAKE_MAX_WAITING returns of this loop already wait for the workers:
        past the workers' pace the wait would only grow, and the page follows the order."""
        limit = settings.INTAKE_MAX_WAITING
        if limit and self.waiting >= limit:
            raise _busy(source, f"{limit} returns waiting for the workers")


def _expire(future: "asyncio.Future[bool]") -> None:
    if not future.done():
        future.set_result(False)


def _behind(admission: Admission) -> None:
    """The loop fell behind: the requests waiting for a place are refused now."""
    while admission.waiters:
        _expire(admission.waiters.popleft())


# How often a loop measures its own lag: often enough to see a backlog of a few requests'
# worth, cheap enough to cost nothing (a timer callback every 10 ms).
LAG_TICK = 0.01
LATE_TICKS = 3


_admissions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission]" = (
    weakref.WeakKeyDictionary())


def admission() -> Admission:
    loop = asyncio.get_running_loop()
    found = _admissions.get(loop)
    if found is None:
        found = _admissions[loop] = Admission()
        found.lag_watch(loop)
    return found


@asynccontextmanager
async def working(source: str) -> AsyncIterator[Admission]:
    """The block as work, in a place of this loop's; Busy when none comes free in time."""
    places = admission()
    await places.enter(source)
    try:
        yield places
    finally:
        places.leave()


def _busy(source: str, why: str) -> Busy:
    metrics.event_received(source=source, outcome="busy")
    if throttle.log_once(f"busy:{source}"):
        logger.warning("%s refused: %s intake requests in this process and %s (503)", source,
                       settings.INTAKE_MAX_ACTIVE, why)
    return Busy(settings.INTAKE_RETRY_AFTER_SECONDS)
