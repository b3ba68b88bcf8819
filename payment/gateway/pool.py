"""The gateway's threads: one long-lived pool per process for calls to Alipay made many at
once (trade queries of reconciliation, of a bill's missing trades, of a batch of returns)."""
import functools
import os
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings


@functools.cache
def _call_pool(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(settings.GATEWAY_CONCURRENCY, thread_name_prefix="alipay")


def call_pool() -> ThreadPoolExecutor:
    """This process's pool of GATEWAY_CONCURRENCY gateway threads (a forked child makes its
    own), kept alive between batches."""
    return _call_pool(os.getpid())


def call_pool_reset() -> None:
    """Forget the pools (after GATEWAY_CONCURRENCY changes: benchmarks, tests); the next call
    makes a new one. Calls already running on the old pool finish there."""
    _call_pool.cache_clear()
