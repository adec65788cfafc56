"""Which provider class serves which configured model.

`PROVIDERS` maps a provider name (as used in the model catalogue) to its class; `AI_MODELS`
in settings is the catalogue for now (the providers issue moves it into the database).
"""

from __future__ import annotations

from django.conf import settings

from providers.base import ModelSpec, Provider
from providers.demo import DemoProvider

PROVIDERS: dict[str, type[Provider]] = {
    DemoProvider.name: DemoProvider,
}


class UnknownModel(LookupError):
    """No enabled model has this key."""


def available_models() -> list[ModelSpec]:
    """Every model users may pick, in catalogue order."""
    return [
        ModelSpec(
            key=key,
            display_name=config["display_name"],
            provider=config["provider"],
            provider_model_id=config["provider_model_id"],
            is_demo=bool(config.get("is_demo", False)),
            options=dict(config.get("options", {})),
        )
        for key, config in settings.AI_MODELS.items()
    ]


def default_model() -> ModelSpec:
    return get_model(settings.AI_DEFAULT_MODEL)


def get_model(key: str) -> ModelSpec:
    """The model with this key. Raises UnknownModel."""
    for spec in available_models():
        if spec.key == key:
            return spec
    raise UnknownModel(key)


def provider_for(spec: ModelSpec) -> Provider:
    """A provider instance for one call to this model. Raises UnknownModel."""
    try:
        provider_class = PROVIDERS[spec.provider]
    except KeyError:
        raise UnknownModel(spec.key) from None
    return provider_class(spec)
