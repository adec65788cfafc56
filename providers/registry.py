"""Which models a user may pick, and which provider class serves a model.

The catalogue lives in the database (`providers.models.AIModel`, managed in the admin).
`PROVIDERS` maps a provider name to its class.
"""

from __future__ import annotations

from django.db.models import Q

from accounts.models import User
from providers.base import ModelSpec, Provider, ProviderTimeouts
from providers.bedrock import BedrockProvider
from providers.demo import DemoProvider
from providers.models import AIModel
from providers.openai import (
    AzureOpenAIProvider,
    OpenAICompatibleProvider,
    OpenAIResponsesProvider,
    resolve_openai_driver,
)

PROVIDERS: dict[str, type[Provider]] = {
    DemoProvider.name: DemoProvider,
    BedrockProvider.name: BedrockProvider,
    OpenAIResponsesProvider.name: OpenAIResponsesProvider,
    AzureOpenAIProvider.name: AzureOpenAIProvider,
    OpenAICompatibleProvider.name: OpenAICompatibleProvider,
}


class UnknownModel(LookupError):
    """No enabled model has this key, or the user may not use it."""


def _spec(row: AIModel) -> ModelSpec:
    return ModelSpec(
        key=row.key,
        display_name=row.display_name,
        description=row.description,
        provider=row.provider,
        provider_model_id=row.provider_model_id,
        is_demo=row.provider == DemoProvider.name,
        options=dict(row.options or {}),
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
        fallback=row.fallback.key if row.fallback_id and row.fallback else None,
    )


def _usable_by(user: User) -> Q:
    if user.is_superuser:
        return Q()
    return Q(available_to_everyone=True) | Q(allowed_groups__in=user.groups.all())


def models_for_user(user: User) -> list[ModelSpec]:
    """The enabled models `user` may use, in picker order."""
    if not user.is_active:
        return []
    rows = (
        AIModel.objects.filter(enabled=True)
        .filter(_usable_by(user))
        .select_related("fallback")
        .distinct()
        .order_by("position", "display_name")
    )
    return [_spec(row) for row in rows]


def default_model_for(user: User, usable: list[ModelSpec] | None = None) -> ModelSpec | None:
    """The catalogue's default model if the user may use it, else their first model.

    `usable` is `models_for_user(user)` when the caller has it already.
    """
    if usable is None:
        usable = models_for_user(user)
    return next((m for m in usable if m.key == _default_key()), usable[0] if usable else None)


def _default_key() -> str | None:
    return AIModel.objects.filter(is_default=True).values_list("key", flat=True).first()


def model_for_user(key: str, user: User) -> ModelSpec:
    """The model `key` if it is enabled and `user` may use it. Raises UnknownModel."""
    row = (
        AIModel.objects.filter(key=key, enabled=True)
        .filter(_usable_by(user))
        .select_related("fallback")
        .first()
    )
    if row is None or not user.is_active:
        raise UnknownModel(key)
    return _spec(row)


def get_model(key: str) -> ModelSpec:
    """The enabled model `key`, whoever asks (workers, fallbacks). Raises UnknownModel."""
    row = AIModel.objects.filter(key=key, enabled=True).select_related("fallback").first()
    if row is None:
        raise UnknownModel(key)
    return _spec(row)


def supports_tools(spec: ModelSpec) -> bool:
    """Whether the model's provider can be offered tools (an unknown provider: no)."""
    provider_class = PROVIDERS.get(resolve_openai_driver(spec.provider))
    return bool(provider_class and provider_class.supports_tools)


def provider_for(spec: ModelSpec, *, timeouts: ProviderTimeouts | None = None) -> Provider:
    """A provider instance for one call to this model. Raises UnknownModel."""
    try:
        # OPENAI_DRIVER=azure-openai sends `openai` models to Azure OpenAI.
        provider_class = PROVIDERS[resolve_openai_driver(spec.provider)]
    except KeyError:
        raise UnknownModel(spec.key) from None
    return provider_class(spec, timeouts=timeouts)
