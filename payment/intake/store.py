"""Where the intake reads and writes: one statement at a time, through a small interface.

The intake's decisions (payment/intake/core.py) are the same on every database; only how a
statement reaches the database differs:
- `PsycopgStore`: PostgreSQL from the ASGI server's event loop, through an async pool, with
  no thread per request (production);
- `DjangoStore`: Django's connection on a thread (SQLite under `make run`, and any database
  when the intake is served through Django: the WSGI module, runserver, the test client).
Both raise `StoreUnavailable` when the database cannot answer, which the intake turns into 503.
"""
import asyncio
import logging
import weakref
from datetime import datetime
from typing import Any, Protocol

import psycopg
import psycopg_pool
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]


class StoreUnavailable(Exception):
    """The database did not answer; nothing was stored."""


class IntakeStore(Protocol):
    async def fetch_one(self, sql: str, values: list[Any]) -> Row | None:
        """Run one statement (autocommit) and return its first row."""


def is_postgresql() -> bool:
    return bool(connections["default"].vendor == "postgresql")


class DjangoStore:
    """Django's default connection, on the thread Django gives sync code of this request."""

    async def fetch_one(self, sql: str, values: list[Any]) -> Row | None:
        return await sync_to_async(self._fetch_one)(sql, values)

    @staticmethod
    def _fetch_one(sql: str, values: list[Any]) -> Row | None:
        # The intake is not a Django request: drop a connection a failure left unusable.
        close_old_connections()
        adapt = connection.ops.adapt_datetimefield_value
        values = [adapt(v) if isinstance(v, datetime) else v for v in values]
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, values)
                row: Row | None = cursor.fetchone()
                return row
        except DatabaseError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


class PsycopgStore:
    """PostgreSQL through one async connection pool per event loop (a server's loop lives as
    long as its process)."""

    def __init__(self) -> None:
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, psycopg_pool.AsyncConnectionPool] = (
            weakref.WeakKeyDictionary())

    @staticmethod
    def _conninfo() -> str:
        db = settings.DATABASES["default"]
        parts = {"dbname": db["NAME"], "user": db.get("USER"), "password": db.get("PASSWORD"),
                 "host": db.get("HOST"), "port": db.get("PORT")}
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items() if v})

    async def _pool(self) -> psycopg_pool.AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = psycopg_pool.AsyncConnectionPool(
                self._conninfo(), min_size=2, max_size=settings.DATABASE_POOL_SIZE,
                timeout=settings.DATABASE_POOL_TIMEOUT_SECONDS,
                kwargs={"autocommit": True}, open=False,
            )
            await pool.open()
        return pool

    async def fetch_one(self, sql: str, values: list[Any]) -> Row | None:
        try:
            pool = await self._pool()
            try:
                return await self._fetch_one(pool, sql, values)
            except psycopg.OperationalError:
                # A connection the server ended while it waited in the pool (a restart, a
                # failover, pg_terminate_backend): the pool checks its idle ones at once
                # (psycopg's advice after a disconnection) and the statement goes once more,
                # on a live one. Nothing is checked before each statement: that would cost a
                # round trip per request on the payment path. The intake's statements may run
                # twice: an event insert recognises its own row as the duplicate.
                await pool.check()
                return await self._fetch_one(pool, sql, values)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    @staticmethod
    async def _fetch_one(pool: psycopg_pool.AsyncConnectionPool, sql: str,
                         values: list[Any]) -> Row | None:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, values)
            return await cursor.fetchone()

    async def close(self) -> None:
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
