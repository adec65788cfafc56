"""API keys (accounts.ApiKey), service accounts, and the roles' API key permissions."""

import django.core.validators
import django.db.models.deletion
import uuid
from decimal import Decimal
from django.conf import settings
from django.db import migrations, models

from accounts.roles import roles_sync


def sync_roles(apps, schema_editor):
    # Administrators manage API keys, compliance officers read them (accounts/roles.py).
    roles_sync(apps)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_user_sessions'),
        # roles_sync gives each role exactly the permissions that exist: every app with role
        # permissions must be migrated first.
        ('admin', '0003_logentry_add_action_flag_choices'),
        ('audit', '0005_catalogue_api_key_actions'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('axes', '0010_accessattemptexpiration'),
        ('conversations', '0006_usage_index'),
        ('costs', '0003_price_currency_budget_group_protect'),
        ('guardrails', '0002_roles'),
        ('providers', '0002_seed_demo_model'),
    ]

    operations = [
        migrations.AddField(
            model_name='user',
            name='is_service_account',
            field=models.BooleanField(default=False, help_text="A service account acts only through API keys and cannot sign in. Put it in one department (group) so its keys spend that department's budget."),
        ),
        migrations.CreateModel(
            name='ApiKey',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('public_id', models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ('name', models.CharField(max_length=100)),
                ('prefix', models.CharField(editable=False, max_length=16, unique=True)),
                ('secret_hash', models.CharField(editable=False, max_length=64)),
                ('scopes', models.JSONField(default=list)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('expires_at', models.DateTimeField(blank=True, null=True)),
                ('revoked_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('expiry_recorded_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('last_used_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('last_used_ip', models.GenericIPAddressField(blank=True, editable=False, null=True)),
                ('rate_limit_per_minute', models.PositiveIntegerField(blank=True, help_text='Requests per minute for this key (enforced by the API); empty: the default.', null=True, validators=[django.core.validators.MinValueValidator(1)])),
                ('budget_limit', models.DecimalField(blank=True, decimal_places=2, help_text="Spend limit for this key per budget period (enforced by the API), on top of the owner's budgets; empty: none.", max_digits=12, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))])),
                ('budget_period', models.CharField(choices=[('day', 'Day'), ('month', 'Month')], default='month', max_length=8)),
                ('created_by', models.ForeignKey(blank=True, editable=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('owner', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='api_keys', to=settings.AUTH_USER_MODEL)),
                ('revoked_by', models.ForeignKey(blank=True, editable=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'API key',
                'ordering': ['-created_at'],
                'indexes': [models.Index(fields=['owner', '-created_at'], name='accounts_apikey_owner_idx'), models.Index(fields=['-created_at'], name='accounts_apikey_created_idx')],
            },
        ),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
    ]
