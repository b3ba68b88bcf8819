"""A worker's cold shutdown (SIGTERM, which the Procfile remaps to SIGQUIT) runs in its event
loop, between two reads of the broker connection, not inside the signal handler.

Celery's cold-shutdown handler cancels the task consumer, a `basic_cancel` that waits for its
reply on the connection the interrupted loop may be reading from. On RabbitMQ a signal that lands
while the loop has read part of a frame leaves the two reads out of step: the worker then waits
for ever in the pidbox's `basic_cancel` (seen with py-spy) until it is killed. Here the signal
handler only queues the signal and wakes the loop through a pipe; Celery's own handler then runs
from the loop. If the loop does not take it within a second (it is reconnecting to a broker that
is away, or busy), an alarm runs Celery's handler as Celery always does.

Only a worker whose consumer runs an event loop (Redis, RabbitMQ) is changed; the server-less
filesystem broker has no shared socket to protect.

The consumer resets the event loop when it reconnects to its broker, and that drops every reader
the loop had: the pipe's is added again on the loop's next pass.
"""
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from celery import signals

logger = logging.getLogger(__name__)

DEFERRED = (signal.SIGTERM, signal.SIGQUIT)
FALLBACK_AFTER = 1.0

Handler = Callable[[int, FrameType | None], Any]


class LoopShutdown:
    """Queues the cold-shutdown signals and hands them to Celery's handlers from the loop."""

    def __init__(self, hub: Any) -> None:
        self.pid = os.getpid()
        self.hub = hub
        self.pending: tuple[Handler, int] | None = None  # one request: a repeat adds nothing
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.keep_reading()
        hub.on_tick.add(self.keep_reading)  # kept by a reset, which drops the readers
        signal.signal(signal.SIGALRM, self.on_alarm)
        for signum in DEFERRED:
            celery_handler = signal.getsignal(signum)
            if callable(celery_handler):
                signal.signal(signum, self.deferring(celery_handler))

    def deferring(self, celery_handler: Handler) -> Handler:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != self.pid:  # a pool process forked after this was set up
                celery_handler(signum, frame)
                return
            if self.pending is not None:  # again, before the loop took the first
                return
            self.pending = (celery_handler, signum)
            signal.setitimer(signal.ITIMER_REAL, FALLBACK_AFTER)
            try:
                os.write(self.write_fd, b"\0")
            except BlockingIOError:
                pass  # the loop has a wake-up to read already
        return on_signal

    def keep_reading(self) -> None:
        if self.read_fd not in self.hub.readers:
            self.hub.add_reader(self.read_fd, self.run_pending)

    def run_pending(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            while os.read(self.read_fd, 64):
                pass
        except BlockingIOError:
            pass
        if self.pending is not None:
            (celery_handler, signum), self.pending = self.pending, None
            celery_handler(signum, None)  # it installs its handlers for a second signal

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() == self.pid:
            if self.pending is not None:
                logger.info("shutdown: the event loop did not take the signal within %.0f s; "
                            "stopping from the signal handler", FALLBACK_AFTER)
            self.run_pending()


@signals.worker_ready.connect
def _cold_shutdown_in_the_loop(sender: Any = None, **kwargs: Any) -> None:
    """The worker's main process, once its consumer is up (Celery's handlers are installed)."""
    hub = getattr(sender, "hub", None)
    if hub is not None:
        LoopShutdown(hub)


class PoolStopLevel(logging.Filter):
    """billiard logs a pool process that ended by a signal as an ERROR unless the pool ended
    it. A stop may send SIGTERM to every process of a worker (honcho on Ctrl-C signals the
    process group, systemd its control group), and a pool process may end before its main
    process takes the signal: a stop, not a failure, so a WARNING. A process killed by
    anything else (SIGKILL by the kernel's OOM killer, a crash) stays an ERROR."""

    MESSAGE = "Process %r pid:%r exited with %r"
    STOPPED = "signal 15 (SIGTERM)"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (record.msg == self.MESSAGE and isinstance(args, tuple) and len(args) == 3
                and args[2] == self.STOPPED and record.levelno > logging.WARNING):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@signals.worker_init.connect
def _pool_stop_level(**kwargs: Any) -> None:
    from billiard.util import get_logger

    get_logger().addFilter(PoolStopLevel())
