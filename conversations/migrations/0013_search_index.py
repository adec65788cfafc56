"""The blind search index (conversations.search, docs/data-protection.md "Search").

On PostgreSQL the table also gets `search_vector`, a tsvector generated from the tokens
('simple' configuration: no stemming, no stop words: the tokens are opaque), and a GIN index
over it; other databases (the embedded SQLite) match the tokens column with LIKE.

Existing conversations are indexed by `manage.py rebuild_search_index` after the upgrade
(it needs the master key and reads every message; not something to do inside a migration).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


TABLE = "conversations_searchdocument"


def _postgres_only(sql: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


ADD_VECTOR = (
    f"ALTER TABLE {TABLE} ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple', tokens)) STORED; "
    f"CREATE INDEX searchdoc_vector_gin ON {TABLE} USING GIN (search_vector)"
)
DROP_VECTOR = (
    "DROP INDEX IF EXISTS searchdoc_vector_gin; "
    f"ALTER TABLE {TABLE} DROP COLUMN IF EXISTS search_vector"
)


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0012_message_superseded_by'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='SearchDocument',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('tokens', models.TextField()),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('conversation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='search_documents', to='conversations.conversation')),
                ('message', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='search_document', to='conversations.message')),
                ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'indexes': [models.Index(fields=['owner', 'conversation'], name='searchdoc_owner_idx')],
                'constraints': [models.UniqueConstraint(condition=models.Q(('message__isnull', True)), fields=('conversation',), name='searchdoc_one_title_per_conversation')],
            },
        ),
        migrations.RunPython(_postgres_only(ADD_VECTOR), _postgres_only(DROP_VECTOR)),
    ]
