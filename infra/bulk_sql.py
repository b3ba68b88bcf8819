"""Many rows updated with their own values in one statement, and reads written once in SQL.

Django's `bulk_update` writes a CASE per field per row, and building it cost more than 2 s of
CPU for 500 events; `WITH v AS (VALUES ...) UPDATE ... FROM v` is one short statement that
PostgreSQL and SQLite (3.33+) both take. On a batch's hot path, building a queryset's SQL
costs more than PostgreSQL running it: `rows_select` runs SQL written once, with `marks` for
its `IN` lists (both databases take them).
"""
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, models


def rows_update(
    *,
    model: type[models.Model],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    expressions: dict[str, str] | None = None,
    where: str = "",
) -> int:
    """Set `columns` (field names) of `model` from `rows` (primary key first), matched on it.

    `expressions` replaces a column's plain new value with SQL over `new.<column>` and the
    current `{table}.<column>`; `where` adds a condition on the rows to update, in SQL.
    Returns the number of rows updated (-1 where the driver cannot tell, as SQLite here).
    """
    if not rows:
        return 0
    sql, params = rows_update_sql(model=model, columns=columns, rows=rows,
                                  expressions=expressions, where=where)
    return rows_execute(sql, params)


def rows_updated(
    *,
    model: type[models.Model],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    expressions: dict[str, str] | None = None,
    where: str = "",
) -> set[Any]:
    """As rows_update, but returns the primary keys of the rows it updated (RETURNING)."""
    if not rows:
        return set()
    sql, params = rows_update_sql(model=model, columns=columns, rows=rows,
                                  expressions=expressions, where=where)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {table}.{model._meta.pk.column}", params)
        return {row[0] for row in cursor.fetchall()}


def rows_update_sql(
    *,
    model: type[models.Model],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    expressions: dict[str, str] | None = None,
    where: str = "",
) -> tuple[str, list[Any]]:
    """The statement `rows_update` runs and its parameters (at least one row)."""
    meta = model._meta
    table = connection.ops.quote_name(meta.db_table)
    fields = [_concrete(meta.pk), *(_concrete(meta.get_field(name)) for name in columns)]
    names = [str(f.column) for f in fields]
    placeholder = "(" + ", ".join(["%s"] * len(names)) + ")"
    # PostgreSQL types VALUES columns by their first rows: a column of NULLs would be text.
    typed = {f.column: (f"CAST(v.{f.column} AS {f.db_type(connection)})"
                        if connection.vendor == "postgresql" else f"v.{f.column}")
             for f in fields}
    sets = ", ".join(
        f"{column} = " + (expressions or {}).get(column, "{new}").format(
            new=typed[column], table=table)
        for column in names[1:]
    )
    sql = (
        f"WITH v ({', '.join(names)}) AS (VALUES {', '.join([placeholder] * len(rows))}) "
        f"UPDATE {table} SET {sets} FROM v WHERE {table}.{names[0]} = {typed[names[0]]}"
        + (f" AND {where}" if where else "")
    )
    return sql, [_adapt(value) for row in rows for value in row]


def _adapt(value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value


def _concrete(field: Any) -> "models.Field[Any, Any]":
    assert isinstance(field, models.Field) and field.column, field
    return field


def marks(values: Sequence[Any]) -> str:
    """The placeholders of an `IN (...)` list of these values (at least one)."""
    assert values, "an IN list needs a value"
    return ", ".join(["%s"] * len(values))


def rows_select(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of one statement, as the driver returns them (no field conversion: a
    PostgreSQL `jsonb` comes back as text, as Django's JSONField reads it)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, [_adapt(value) for value in params])
        return list(cursor.fetchall())


def rows_execute(sql: str, params: Sequence[Any]) -> int:
    """Run one statement that returns no rows; the rows it changed (-1 where unknown)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, [_adapt(value) for value in params])
        return int(cursor.rowcount)
