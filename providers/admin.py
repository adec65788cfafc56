from django.contrib import admin

from providers.models import AIModel


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = (
        "display_name", "key", "provider", "provider_model_id", "enabled", "is_default",
        "available_to_everyone", "fallback", "context_window", "max_output_tokens",
    )  # fmt: skip
    list_filter = ("provider", "enabled", "available_to_everyone", "allowed_groups")
    list_select_related = ("fallback",)
    search_fields = ("key", "display_name", "provider_model_id")
    filter_horizontal = ("allowed_groups",)
    ordering = ("position", "display_name")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "key",
                    "display_name",
                    "description",
                    "enabled",
                    "is_default",
                    "position",
                )
            },
        ),
        ("Provider", {"fields": ("provider", "provider_model_id", "options")}),
        ("Limits", {"fields": ("context_window", "max_output_tokens")}),
        ("Who may use it", {"fields": ("available_to_everyone", "allowed_groups")}),
        ("Failover", {"fields": ("fallback",)}),
    )
