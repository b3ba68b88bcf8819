# Every payment event is written three times (stored, claimed, settled), and none of those
# updates can stay within its heap page's index entries (each changes an indexed column): every
# write adds an entry to every index of the table. The indexes that no query reads go:
# - the `varchar_pattern_ops` copies PostgreSQL gets for indexed text columns (`..._like`):
#   they serve `LIKE 'prefix%'` only, which nothing runs (the admin's searches are
#   `icontains`, which no B-tree serves); payments' too;
# - `state` alone: the `(state, received_at)` index serves every query by state.
# On PostgreSQL they are dropped CONCURRENTLY, so that payments go on meanwhile.

from django.db import migrations, models

LIKE_COPIES = {
    "paymentevent": ["dedupe_key", "order", "out_trade_no", "state", "trade_no"],
    "payment": ["trade_id", "status", "order"],
}


def _index_name(schema_editor, model, field_name, suffix=""):
    column = model._meta.get_field(field_name).column
    return schema_editor._create_index_name(model._meta.db_table, [column], suffix=suffix)


def indexes_drop(apps, schema_editor):
    event = apps.get_model("payment", "paymentevent")
    names = [_index_name(schema_editor, event, "state")]
    drop = "DROP INDEX IF EXISTS {}"
    if schema_editor.connection.vendor == "postgresql":
        drop = "DROP INDEX CONCURRENTLY IF EXISTS {}"
        names += [_index_name(schema_editor, apps.get_model("payment", model_name), field, "_like")
                  for model_name, fields in LIKE_COPIES.items() for field in fields]
    for name in names:
        schema_editor.execute(drop.format(schema_editor.quote_name(name)))


def indexes_create(apps, schema_editor):
    event = apps.get_model("payment", "paymentevent")
    schema_editor.execute(schema_editor._create_index_sql(
        event, fields=[event._meta.get_field("state")]))
    if schema_editor.connection.vendor == "postgresql":
        for model_name, fields in LIKE_COPIES.items():
            model = apps.get_model("payment", model_name)
            for field in fields:
                schema_editor.execute(schema_editor._create_like_index_sql(
                    model, model._meta.get_field(field)))


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ('payment', '0015_refund_idempotency_key_per_user'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AlterField(
                model_name='paymentevent',
                name='state',
                field=models.CharField(choices=[('received', 'Received'), ('applied', 'Applied'), ('recorded', 'Recorded'), ('rejected', 'Rejected'), ('dead', 'Dead')], default='received', max_length=10),
            )],
            database_operations=[migrations.RunPython(indexes_drop, indexes_create)],
        ),
    ]
