"""Beat on several hosts: celery-redbeat's scheduler, whichever beat holds its lock sends.

`celery -A workers beat` picks it when the settings have Redis (CELERY_BEAT_SCHEDULER). Every
beat keeps the schedule and each job's last run in Redis; the one holding the lock renews it
on every pass and sends what is due, the others wait in `beat_init` until it is free. A
leader killed outright leaves its lock to expire (CELERY_BEAT_LOCK_TIMEOUT), a stopped one
releases it, and the next leader goes on from the last runs recorded, so nothing is sent
twice or skipped.
"""
import logging
import time
from typing import Any

from celery import Celery, signals
from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockNotOwnedError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.celery import startup_require

logger = logging.getLogger(__name__)

REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)
# How soon a beat whose Redis is away looks again.
REDIS_AWAY_RETRY_SECONDS = 1.0

# redbeat tells its own settings from the broker's fallbacks by their bare names, which
# Celery's Django namespace keeps as CELERY_REDBEAT_*: without them under those names it
# warns, and leaves out the socket timeouts of CELERY_REDBEAT_REDIS_OPTIONS.
OWN_SETTINGS = (
    "redbeat_redis_url", "redbeat_redis_options", "redbeat_key_prefix", "redbeat_lock_timeout",
)


class LockedScheduler(RedBeatScheduler):  # type: ignore[misc]
    def __init__(self, app: Celery, **kwargs: Any) -> None:
        startup_require()  # before the schedule is written: a refused beat changes nothing
        for name in OWN_SETTINGS:
            app.conf[name] = app.conf[name]
        super().__init__(app, **kwargs)

    def setup_schedule(self) -> None:
        # Run when beat starts (and when it takes the lock): a beat started, or restarted by
        # its orchestrator, while Redis is away waits for it instead of ending.
        while True:
            try:
                super().setup_schedule()
                return
            except REDIS_AWAY as exc:
                logger.warning("beat: Redis is away (%s); setting up the schedule again in "
                               "%.0f s", exc, REDIS_AWAY_RETRY_SECONDS)
                time.sleep(REDIS_AWAY_RETRY_SECONDS)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            try:
                return float(super().tick(*args, **kwargs))
            except LockNotOwnedError:
                # The lock expired while this beat was away (paused past the timeout), or Redis
                # lost its data: another beat may be sending now. Nothing was sent on this
                # pass; wait for the lock like any other beat, then go on from the runs
                # recorded.
                logger.warning("beat: lost the lock %s; waiting to take it again",
                               self.lock_key)
                self.lock.acquire()
                logger.info("beat: took the lock %s again", self.lock_key)
                self.setup_schedule()
                return 0.0
        except REDIS_AWAY as exc:
            # Redis is restarting: redbeat raised out of Celery's beat loop, which ended beat
            # (and honcho the whole stack with it). The lock and the schedule are in Redis: look
            # again shortly; a Redis back empty is a lost lock, above.
            logger.warning("beat: Redis is away (%s); looking again in %.0f s", exc,
                           REDIS_AWAY_RETRY_SECONDS)
            return REDIS_AWAY_RETRY_SECONDS

    def close(self) -> None:
        try:
            super().close()
        except REDIS_AWAY as exc:
            # Stopping while Redis is away: the lock expires by itself (CELERY_BEAT_LOCK_TIMEOUT).
            logger.warning("beat: could not release the lock %s: %s", self.lock_key, exc)


@signals.beat_init.connect
def _schedule_install(sender: Any, **kwargs: Any) -> None:
    """Connected after redbeat's handler that waits for the lock: the beat that takes it
    installs the schedule it was started with (keeping the last runs recorded), whatever
    happened to Redis while it waited."""
    scheduler = sender.scheduler
    if isinstance(scheduler, LockedScheduler) and scheduler.lock is not None:
        scheduler.setup_schedule()
