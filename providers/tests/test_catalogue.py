"""The model catalogue decides who may use which model; nothing else reaches a provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.test import Client

from conversations.models import Message
from providers import registry
from providers.base import ChatRequest, Finish, Provider, StopReason, StreamEvent, TextDelta
from providers.models import AIModel
from providers.registry import UnknownModel, default_model_for, model_for_user, models_for_user
from tests.support import connected

pytestmark = pytest.mark.django_db


class CountingProvider(Provider):
    """Stands in for a paid service; counts every call that would have reached it."""

    name = "counting"
    calls = 0

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        type(self).calls += 1
        yield TextDelta("paid answer")
        yield Finish(StopReason.END_TURN)


@pytest.fixture
def legal_only(monkeypatch) -> AIModel:
    """A model only the Legal group may use."""
    monkeypatch.setitem(registry.PROVIDERS, "counting", CountingProvider)
    CountingProvider.calls = 0
    model = AIModel.objects.create(
        key="legal-model", display_name="Legal model", provider="counting", provider_model_id="x"
    )
    model.allowed_groups.add(Group.objects.create(name="Legal"))
    return model


def test_seeded_demo_is_the_default_for_everyone(owner) -> None:
    assert [m.key for m in models_for_user(owner)] == ["demo"]
    assert default_model_for(owner).key == "demo"  # type: ignore[union-attr]


def test_group_models_are_offered_only_to_members(owner, colleague, legal_only) -> None:
    owner.groups.add(Group.objects.get(name="Legal"))
    assert "legal-model" in [m.key for m in models_for_user(owner)]
    assert "legal-model" not in [m.key for m in models_for_user(colleague)]
    assert model_for_user("legal-model", owner).provider == "counting"
    with pytest.raises(UnknownModel):
        model_for_user("legal-model", colleague)


def test_disabled_models_are_offered_to_nobody(owner, legal_only) -> None:
    owner.groups.add(Group.objects.get(name="Legal"))
    AIModel.objects.filter(key="legal-model").update(enabled=False)
    assert "legal-model" not in [m.key for m in models_for_user(owner)]
    with pytest.raises(UnknownModel):
        model_for_user("legal-model", owner)


def test_the_picker_shows_only_usable_models(client: Client, owner, colleague, legal_only) -> None:
    owner.groups.add(Group.objects.get(name="Legal"))
    client.force_login(colleague)
    assert "Legal model" not in client.get("/").content.decode()
    client.force_login(owner)
    assert "Legal model" in client.get("/").content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("forged", ["legal-model", "no-such-model", "demo-disabled"])
async def test_a_forged_or_disallowed_model_is_refused_with_zero_provider_calls(
    colleague, session_cookie, legal_only, forged
) -> None:
    await database_sync_to_async(AIModel.objects.create)(
        key="demo-disabled",
        display_name="Off",
        provider="counting",
        provider_model_id="y",
        enabled=False,
        available_to_everyone=True,
    )
    comm = await connected(await database_sync_to_async(session_cookie)(colleague))
    await comm.send_json_to({"type": "send", "conversation": None, "text": "hi", "model": forged})
    frame = await comm.receive_json_from(timeout=5)
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "model_unavailable"
    assert CountingProvider.calls == 0
    assert await database_sync_to_async(Message.objects.count)() == 0


def test_only_one_default_model() -> None:
    with pytest.raises(IntegrityError):
        AIModel.objects.create(
            key="other",
            display_name="Other",
            provider="demo",
            provider_model_id="d",
            is_default=True,
        )


def test_fallback_loops_are_refused() -> None:
    first = AIModel.objects.create(
        key="a", display_name="A", provider="demo", provider_model_id="d"
    )
    second = AIModel.objects.create(
        key="b", display_name="B", provider="demo", provider_model_id="d", fallback=first
    )
    first.fallback = second
    with pytest.raises(ValidationError, match="loop"):
        first.full_clean()


def test_output_must_fit_in_the_context_window() -> None:
    with pytest.raises(IntegrityError):
        AIModel.objects.create(
            key="tiny",
            display_name="Tiny",
            provider="demo",
            provider_model_id="d",
            context_window=100,
            max_output_tokens=200,
        )
