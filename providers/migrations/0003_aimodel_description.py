from django.db import migrations, models


def describe_demo(apps, schema_editor):
    AIModel = apps.get_model("providers", "AIModel")
    # A queryset update on a governed model would be audited as a bulk write; the seeded row
    # is changed through the historical model's plain manager instead.
    for model in AIModel.objects.filter(key="demo", description=""):
        model.description = (
            "Offline stand-in: canned Markdown replies that say nothing about your question."
        )
        model.save(update_fields=["description"])


class Migration(migrations.Migration):
    dependencies = [("providers", "0002_seed_demo_model")]
    operations = [
        migrations.AddField(
            model_name="aimodel",
            name="description",
            field=models.CharField(
                blank=True,
                help_text="One sentence for the model picker: what the model is good at.",
                max_length=300,
            ),
        ),
        migrations.RunPython(describe_demo, migrations.RunPython.noop),
    ]
