"""The statement rows_update runs, built without a database: one VALUES list, matched on the key."""
from datetime import UTC, datetime

from django.db import connection

from infra.bulk_sql import rows_update_sql
from payment.models import PaymentEvent

TABLE = connection.ops.quote_name(PaymentEvent._meta.db_table)


def _cast(column: str, db_type: str) -> str:
    return f"CAST(v.{column} AS {db_type})" if connection.vendor == "postgresql" else f"v.{column}"


def test_each_row_brings_its_own_values_matched_on_the_primary_key() -> None:
    sql, params = rows_update_sql(model=PaymentEvent, columns=["state", "attempts"],
                                  rows=[(7, "done", 2), (9, "dead", 5)])

    state = _cast("state", PaymentEvent._meta.get_field("state").db_type(connection))
    attempts = _cast("attempts", PaymentEvent._meta.get_field("attempts").db_type(connection))
    key = _cast("id", PaymentEvent._meta.pk.db_type(connection))
    assert sql == (
        "WITH v (id, state, attempts) AS (VALUES (%s, %s, %s), (%s, %s, %s)) "
        f"UPDATE {TABLE} SET state = {state}, attempts = {attempts} FROM v "
        f"WHERE {TABLE}.id = {key}"
    )
    assert params == [7, "done", 2, 9, "dead", 5]


def test_an_expression_replaces_a_plain_value_and_where_narrows_the_rows() -> None:
    sql, params = rows_update_sql(
        model=PaymentEvent, columns=["attempts"], rows=[(3, 1)],
        expressions={"attempts": "{table}.attempts + {new}"}, where="state <> 'done'",
    )

    attempts = _cast("attempts", PaymentEvent._meta.get_field("attempts").db_type(connection))
    assert f"SET attempts = {TABLE}.attempts + {attempts} FROM v" in sql
    assert sql.endswith(" AND state <> 'done'")
    assert sql.count("(%s, %s)") == 1 and params == [3, 1]


def test_datetimes_are_adapted_as_the_database_takes_them() -> None:
    moment = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    _, params = rows_update_sql(model=PaymentEvent, columns=["next_attempt_at"],
                                rows=[(1, moment)])

    assert params == [1, connection.ops.adapt_datetimefield_value(moment)]
