"""The model catalogue: which models exist, who may use them, and how to reach them.

Managed in the admin by administrators. Credentials are never stored here: providers read
them from the environment (docs/providers.md).
"""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models

from audit.governed import GovernedManager

PROVIDER_CHOICES = [
    ("demo", "Demo (offline)"),
    ("bedrock", "AWS Bedrock"),
    ("openai", "OpenAI"),
    ("azure-openai", "Azure OpenAI"),
    ("openai-compatible", "OpenAI-compatible server (vLLM, Ollama, LM Studio, LiteLLM)"),
]


class AIModel(models.Model):
    key = models.SlugField(
        max_length=100, unique=True, help_text="Stable name used by the UI, the API and logs."
    )
    display_name = models.CharField(max_length=200)
    description = models.CharField(
        max_length=300,
        blank=True,
        help_text="One sentence for the model picker: what the model is good at.",
    )
    provider = models.CharField(max_length=32, choices=PROVIDER_CHOICES)
    provider_model_id = models.CharField(
        max_length=300,
        help_text="The provider's own id: a Bedrock model id or inference profile, an OpenAI "
        "model, an Azure deployment name, or the model name on an OpenAI-compatible server.",
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(
        default=False, help_text="Selected in the model picker unless the user picks another."
    )
    position = models.PositiveIntegerField(default=100, help_text="Order in the model picker.")
    context_window = models.PositiveIntegerField(
        default=8192, help_text="Tokens the model accepts, input and output together."
    )
    max_output_tokens = models.PositiveIntegerField(
        default=1024, help_text="Longest reply asked of the model, in tokens."
    )
    available_to_everyone = models.BooleanField(
        default=False, help_text="Every active user may use it, whatever their groups."
    )
    allowed_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="ai_models",
        help_text="Members of these groups may use it.",
    )
    fallback = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Answers instead when this model fails or its circuit is open.",
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text='Provider options, e.g. {"context": "server"} for OpenAI server-side state '
        'or {"base_url": "http://vllm:8000/v1"} for an OpenAI-compatible server.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedManager()

    class Meta:
        verbose_name = "AI model"
        ordering = ("position", "display_name")
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="aimodel_one_default",
                violation_error_message="Only one model can be the default.",
            ),
            models.CheckConstraint(
                condition=models.Q(max_output_tokens__gte=1)
                & models.Q(context_window__gt=models.F("max_output_tokens")),
                name="aimodel_output_fits_context",
                violation_error_message="The context window must exceed the maximum output.",
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    def clean(self) -> None:
        if not isinstance(self.options, dict):
            raise ValidationError({"options": "Options must be a JSON object."})
        seen = {self.pk}
        fallback = self.fallback
        while fallback is not None:
            if fallback.pk in seen:
                raise ValidationError({"fallback": "Fallbacks must not form a loop."})
            seen.add(fallback.pk)
            fallback = fallback.fallback
