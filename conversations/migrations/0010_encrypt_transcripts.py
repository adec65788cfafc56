"""Encrypt stored transcript text at rest (docs/data-protection.md, "Encryption at rest").

Three steps: the columns become plain text (the title was varchar(200); the JSON columns
were json/jsonb), the existing rows are sealed in bounded batches, each batch committed on
its own (so a large table neither holds one huge transaction nor starts over after a
failure: already-sealed values are skipped), and the fields become the encrypted ones
(no SQL: they are text columns). The reverse opens every value again, in batches too.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models, transaction

import protection.fields

BATCH = 500
COLUMNS = {
    "conversation": ("title",),
    "message": ("content", "tool_events", "options"),
}


def _rows(model: Any) -> Any:
    last = 0
    while True:
        batch = list(model.objects.filter(pk__gt=last).order_by("pk")[:BATCH])
        if not batch:
            return
        yield batch
        last = batch[-1].pk


def _convert(apps: Any, schema_editor: Any, *, seal: bool) -> None:
    from protection import datakeys

    for model_name, columns in COLUMNS.items():
        model = apps.get_model("conversations", model_name)
        for batch in _rows(model):
            changed = []
            for row in batch:
                dirty = False
                for column in columns:
                    value = getattr(row, column)
                    if value in (None, ""):
                        continue
                    aad = f"conversations.{model_name}.{column}".encode()
                    if seal and not datakeys.is_sealed(value):
                        setattr(row, column, datakeys.seal_bytes(value.encode("utf-8"), aad=aad))
                        dirty = True
                    elif not seal and datakeys.is_sealed(value):
                        setattr(row, column, datakeys.open_bytes(value, aad=aad).decode("utf-8"))
                        dirty = True
                if dirty:
                    changed.append(row)
            if changed:
                with transaction.atomic(using=schema_editor.connection.alias):
                    model.objects.bulk_update(changed, list(columns))


def encrypt_rows(apps: Any, schema_editor: Any) -> None:
    _convert(apps, schema_editor, seal=True)


def decrypt_rows(apps: Any, schema_editor: Any) -> None:
    _convert(apps, schema_editor, seal=False)


class Migration(migrations.Migration):
    atomic = False  # each batch commits on its own

    dependencies = [
        ("conversations", "0009_message_api_key"),
        ("protection", "0001_data_keys"),
    ]

    operations = [
        migrations.AlterField(
            model_name="conversation", name="title", field=models.TextField()
        ),
        migrations.AlterField(
            model_name="message", name="options", field=models.TextField(blank=True, default="{}")
        ),
        migrations.AlterField(
            model_name="message",
            name="tool_events",
            field=models.TextField(blank=True, default="[]"),
        ),
        migrations.RunPython(encrypt_rows, decrypt_rows, elidable=False),
        migrations.AlterField(
            model_name="conversation",
            name="title",
            field=protection.fields.EncryptedTextField(),
        ),
        migrations.AlterField(
            model_name="message",
            name="content",
            field=protection.fields.EncryptedTextField(blank=True),
        ),
        migrations.AlterField(
            model_name="message",
            name="options",
            field=protection.fields.EncryptedJSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="message",
            name="tool_events",
            field=protection.fields.EncryptedJSONField(blank=True, default=list),
        ),
    ]
