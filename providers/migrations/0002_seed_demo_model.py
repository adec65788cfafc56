from django.db import migrations


def seed_demo(apps, schema_editor):
    AIModel = apps.get_model("providers", "AIModel")
    AIModel.objects.get_or_create(
        key="demo",
        defaults={
            "display_name": "Demo model (offline)",
            "provider": "demo",
            "provider_model_id": "demo-1",
            "enabled": True,
            "is_default": True,
            "position": 1000,
            "context_window": 8192,
            "max_output_tokens": 1024,
            "available_to_everyone": True,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_catalogue")]
    operations = [migrations.RunPython(seed_demo, migrations.RunPython.noop)]
