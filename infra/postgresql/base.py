"""Django's PostgreSQL backend, whose pool lends no connection the server has ended.

A connection in the pool can have been ended by the server while it waited (a restart, a
failover, an idle timeout, pg_terminate_backend). Each one lent is checked first (one empty
query); when the check fails, the pool checks all its idle connections at once
(`ConnectionPool.check()`, what psycopg's maintainers advise after a disconnection), drops the
dead ones and opens new ones, and the next connection it lends works: a request pays one retry.
psycopg_pool's own `check` option (Django's CONN_HEALTH_CHECKS) tries the idle connections one
at a time instead, waiting 1 s, 2 s, 4 s... between failures, so that a pool full of ended
connections would hold a request up to its timeout and fail it.
"""
from typing import Any

import psycopg
from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        pool = self.pool  # type: ignore[attr-defined]  # (Django 5.1's; not in django-stubs)
        if pool is None:
            return connection
        try:
            pool.check_connection(connection)
        except psycopg.Error:
            pool.putconn(connection)  # closed: the pool drops it
            pool.check()  # and every idle one the server ended with it
            connection = super().get_new_connection(conn_params)
        return connection
