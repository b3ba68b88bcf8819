"""A broker that is away for a moment (a restart) is a warning in the logs, not an error: the
lines Celery writes while it retries, and only those (tests/workers/test_broker_restarts.py
runs the real restarts)."""
import logging
from typing import Any

from celery.worker.consumer.consumer import CONNECTION_ERROR

from infra.logs import BrokerAwayWarning, TextFormatter


def _celery_record(name: str, level: int, msg: str, args: tuple[Any, ...],
                   exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def _refused() -> ConnectionRefusedError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as exc:
        return exc  # with its traceback


def test_lines_that_only_say_the_broker_is_away_are_one_line_warnings() -> None:
    refused = _refused()
    ack = _celery_record("celery.worker.request", logging.CRITICAL,
                         "Couldn't ack %r, reason:%r", ("tag", refused), refused)
    retry = _celery_record("celery.worker.consumer.consumer", logging.ERROR, CONNECTION_ERROR,
                           ("redis://127.0.0.1:6379/0", refused, "Trying again in 2.00 s"))
    for record in (ack, retry):
        assert BrokerAwayWarning().filter(record)
        assert (record.levelname, record.exc_info) == ("WARNING", None)
        assert "Traceback" not in TextFormatter().format(record)

    # The same line with another cause, and beat ending, keep their level.
    bug = _celery_record("celery.worker.request", logging.CRITICAL,
                         "Couldn't ack %r, reason:%r", ("tag", ValueError("bad")))
    beat_ended = _celery_record("celery.beat", logging.CRITICAL, "beat raised exception %s: %r",
                                (type(refused), refused), refused)
    for record in (bug, beat_ended):
        assert BrokerAwayWarning().filter(record)
        assert record.levelname == "CRITICAL"
