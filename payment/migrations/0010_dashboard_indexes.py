# The dashboard reads the last 24 hours of payments, reconciliation checks and refunds by
# time. On PostgreSQL the indexes are built CONCURRENTLY: a plain CREATE INDEX would block
# every new payment while a large table is indexed.

from django.db import migrations, models

INDEXES = [
    ("payment", models.Index(fields=["created_at"], name="payment_created")),
    ("paymentattempt", models.Index(fields=["last_checked_at"], name="paymentattempt_checked")),
    ("refund", models.Index(fields=["requested_at"], name="refund_requested")),
]


def create_indexes(apps, schema_editor):
    for model_name, index in INDEXES:
        model = apps.get_model("payment", model_name)
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(index.create_sql(model, schema_editor, concurrently=True))
        else:
            schema_editor.add_index(model, index)


def drop_indexes(apps, schema_editor):
    for model_name, index in INDEXES:
        schema_editor.remove_index(apps.get_model("payment", model_name), index)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ('payment', '0009_bill_refund_index'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name=name, index=index)
                              for name, index in INDEXES],
            database_operations=[migrations.RunPython(create_indexes, drop_indexes)],
        ),
    ]
