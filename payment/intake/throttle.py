"""Per-client throttles of the payment endpoints, counted in Redis so they hold across processes.

Built on `limits` (fixed windows: one `INCR`-with-expiry script per request). Without Redis
(the embedded defaults) each process counts in memory. When Redis fails the request is let
through: a throttle protects the service, it must not refuse a payment.

Rates are settings in `limits`' notation ("30/minute", "5 per second"); empty is off.
"""
import asyncio
import functools
import logging
import weakref

import limits
import limits.aio.storage
import limits.aio.strategies
from django.conf import settings
from limits.errors import StorageError

from infra import redis_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "payment-throttle"

_async_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, limits.aio.strategies.FixedWindowRateLimiter]" = (  # noqa: E501
    weakref.WeakKeyDictionary()
)


@functools.cache
def _memory_limiter() -> limits.strategies.FixedWindowRateLimiter:
    return limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())


def _sync_limiter() -> limits.strategies.FixedWindowRateLimiter:
    if not redis_client.enabled():
        return _memory_limiter()
    return _redis_limiter(settings.PAYMENT_REDIS_URL)


@functools.cache
def _redis_limiter(url: str) -> limits.strategies.FixedWindowRateLimiter:
    storage = limits.storage.RedisStorage(
        url, connection_pool=redis_client.sync_client().connection_pool, key_prefix=KEY_PREFIX,
        wrap_exceptions=True)
    return limits.strategies.FixedWindowRateLimiter(storage)


def _async_limiter() -> limits.aio.strategies.FixedWindowRateLimiter:
    loop = asyncio.get_running_loop()
    limiter = _async_limiters.get(loop)
    if limiter is None:
        storage = limits.aio.storage.RedisStorage(
            f"async+{settings.PAYMENT_REDIS_URL}", implementation="redispy",
            key_prefix=KEY_PREFIX, wrap_exceptions=True, socket_connect_timeout=2,
            socket_timeout=2)
        limiter = _async_limiters[loop] = limits.aio.strategies.FixedWindowRateLimiter(storage)
    return limiter


class Throttle:
    """A per-client limit named `scope`, at the rate the setting `setting` holds."""

    def __init__(self, scope: str, setting: str) -> None:
        self.scope = scope
        self.setting = setting

    def rate(self) -> limits.RateLimitItem | None:
        text = str(getattr(settings, self.setting)).strip()
        return limits.parse(text) if text else None

    def retry_after(self) -> int:
        """Seconds until a refused client may try again (at most one window)."""
        rate = self.rate()
        return rate.get_expiry() if rate else 0

    def allow(self, client: str | None) -> bool:
        """Count one request from `client`: whether it may go on."""
        rate = self.rate()
        if rate is None:
            return True
        try:
            return _sync_limiter().hit(rate, self.scope, client or "unknown")
        except StorageError as exc:
            logger.warning("throttle %s not counted: %s", self.scope,
                           type(exc.storage_error).__name__)
            return True

    async def aallow(self, client: str | None) -> bool:
        """allow(), from the event loop."""
        rate = self.rate()
        if rate is None:
            return True
        if not redis_client.enabled():
            return self.allow(client)
        try:
            return await _async_limiter().hit(rate, self.scope, client or "unknown")
        except StorageError as exc:
            logger.warning("throttle %s not counted: %s", self.scope,
                           type(exc.storage_error).__name__)
            return True


# Every PUT /payment/status/ from a client: a buyer's browser sends a handful.
STATUS = Throttle("status", "RETURN_RATE")
# Requests to either endpoint that are not Alipay's (unreadable, or the signature does not
# verify). A notification whose signature verifies is never counted nor throttled, so
# Alipay's retries of it always get through.
REFUSED = Throttle("refused", "PAYMENT_REFUSED_RATE")


LOG_RATE = limits.parse("1/minute")


def log_once(key: str) -> bool:
    """Whether to log about `key` now: once a minute in each process, not once per request."""
    return _memory_limiter().hit(LOG_RATE, "log", key)
