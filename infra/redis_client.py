"""The Redis the payment intake shares across processes: wake-ups and throttles.

`PAYMENT_REDIS_URL` (the broker when it is Redis); empty in the embedded defaults, where
each user of Redis has its own fallback. One synchronous client per process, and one
asynchronous client per long-lived server loop.
"""
import asyncio
import functools
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio
from django.conf import settings

_server_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
_loop_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = (
    weakref.WeakKeyDictionary()
)


def enabled() -> bool:
    return bool(settings.PAYMENT_REDIS_URL)


@functools.cache
def _sync_client(pid: int) -> redis.Redis:
    return redis.Redis.from_url(settings.PAYMENT_REDIS_URL, socket_timeout=2,
                                socket_connect_timeout=2)


def sync_client() -> redis.Redis:
    """This process's client (a forked child makes its own)."""
    return _sync_client(os.getpid())


def server_loop_started(loop: asyncio.AbstractEventLoop) -> None:
    """The ASGI server's long-lived loop: its Redis client and connections are kept."""
    _server_loops.add(loop)


async def server_loop_stopping(loop: asyncio.AbstractEventLoop) -> None:
    client = _loop_clients.pop(loop, None)
    if client is not None:
        await client.aclose()


@asynccontextmanager
async def async_client() -> AsyncIterator[redis.asyncio.Redis]:
    loop = asyncio.get_running_loop()
    if loop in _server_loops:
        client = _loop_clients.get(loop)
        if client is None:
            client = _loop_clients[loop] = redis.asyncio.Redis.from_url(
                settings.PAYMENT_REDIS_URL, socket_connect_timeout=2, socket_timeout=5,
                max_connections=1000, lib_name=None, lib_version=None,
            )
        yield client
        return
    # A loop made for one request (an async view under a WSGI server): nothing is kept.
    client = redis.asyncio.Redis.from_url(settings.PAYMENT_REDIS_URL, socket_connect_timeout=2,
                                          socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()
