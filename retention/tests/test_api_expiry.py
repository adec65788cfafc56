"""The REST API's per-conversation expiry (`retention_days` on POST /api/v1/conversations):
stored at creation, validated with machine codes, never longer than a policy keeps, and
applied by the retention run."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from accounts.api_keys import api_key_create
from api.v1 import api
from conversations.models import Conversation
from retention.models import ConversationRetention, RetentionPolicy
from retention.services import retention_apply
from retention.tests.helpers import is_erased, is_intact

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/conversations"


@pytest.fixture
def headers(owner: Any) -> dict[str, str]:
    scopes = ["chat", "conversations:read", "conversations:write"]
    key = api_key_create(owner=owner, name="tests", scopes=scopes, actor=owner)[1]
    return {"Authorization": f"Bearer {key}"}


async def create(headers: dict[str, str], **body: Any) -> Any:
    return await AsyncClient().post(URL, body, content_type="application/json", headers=headers)


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


async def test_an_expiry_is_stored_and_the_run_erases_the_conversation_when_it_passes(
    headers: dict[str, str],
) -> None:
    response = await create(headers, title="Short-lived", retention_days=7)
    assert response.status_code == 201, response.content
    conversation = await Conversation.objects.aget(public_id=response.json()["id"])
    record = await ConversationRetention.objects.aget(conversation=conversation)
    assert record.ttl_days == 7
    assert record.expires_at == conversation.created_at + dt.timedelta(days=7)
    # The answer says when.
    answered = dt.datetime.fromisoformat(response.json()["expires_at"].replace("Z", "+00:00"))
    assert abs(answered - record.expires_at) < dt.timedelta(milliseconds=1)  # JSON: ms
    detail = await AsyncClient().get(f"{URL}/{conversation.public_id}", headers=headers)
    assert detail.json()["expires_at"] == response.json()["expires_at"]

    await sync_to_async(retention_apply)(now=timezone.now() + dt.timedelta(days=6))
    assert await sync_to_async(is_intact)(conversation)
    # Activity does not extend an expiry: it counts from creation.
    run = await sync_to_async(retention_apply)(now=timezone.now() + dt.timedelta(days=7, hours=1))
    assert run.outcomes[0].rule.key == "api_ttl" and run.outcomes[0].conversations == 1
    assert await sync_to_async(is_erased)(conversation)


async def test_an_expiry_with_a_first_message_is_stored(
    headers: dict[str, str], fast_demo: None
) -> None:
    response = await create(headers, message="Hello there", retention_days=3)
    assert response.status_code == 200, response.content
    record = await ConversationRetention.objects.select_related("conversation").aget(
        conversation__public_id=response.json()["conversation_id"]
    )
    assert record.ttl_days == 3


async def test_without_an_expiry_nothing_is_stored(headers: dict[str, str]) -> None:
    response = await create(headers, title="Kept")
    assert response.status_code == 201
    assert response.json()["expires_at"] is None
    assert not await ConversationRetention.objects.aexists()


@pytest.mark.parametrize("days", [0, -1, 3651, 10**9])
async def test_an_expiry_out_of_bounds_is_400_and_creates_nothing(
    headers: dict[str, str], days: int
) -> None:
    response = await create(headers, title="x", retention_days=days)
    assert response.status_code == 400
    assert error_code(response) == "retention_days_invalid"
    assert "3650" in response.json()["error"]["message"]
    assert not await Conversation.objects.aexists()


async def test_an_expiry_that_is_not_a_whole_number_is_refused(headers: dict[str, str]) -> None:
    for bad in ("7", 7.5, True):
        response = await create(headers, title="x", retention_days=bad)
        assert response.status_code == 422, bad
        assert error_code(response) == "invalid"
    assert not await Conversation.objects.aexists()


async def test_an_expiry_may_not_outlast_a_policy_covering_the_owner(
    headers: dict[str, str], owner: Any
) -> None:
    await RetentionPolicy.objects.acreate(name="Month", scope="organisation", days=30)
    response = await create(headers, title="x", retention_days=31)
    assert response.status_code == 400
    assert error_code(response) == "retention_days_too_long"
    assert "30" in response.json()["error"]["message"]
    assert not await Conversation.objects.aexists()
    response = await create(headers, title="x", retention_days=30)
    assert response.status_code == 201


async def test_a_department_policy_bounds_its_members_expiries(
    headers: dict[str, str], owner: Any
) -> None:
    def setup() -> None:
        from django.contrib.auth.models import Group

        legal = Group.objects.create(name="Legal")
        owner.groups.add(legal)
        RetentionPolicy.objects.create(
            name="Legal", scope="department", group=legal, days=10, action="remove"
        )
        other = Group.objects.create(name="Research")
        RetentionPolicy.objects.create(name="Research", scope="department", group=other, days=2)

    await sync_to_async(setup)()
    response = await create(headers, title="x", retention_days=11)
    assert error_code(response) == "retention_days_too_long"
    assert (await create(headers, title="x", retention_days=10)).status_code == 201


def test_the_expiry_is_documented_in_openapi() -> None:
    schema = api.get_openapi_schema()
    fields = schema["components"]["schemas"]["ConversationIn"]["properties"]
    assert "retention_days" in fields
    assert "retention_days_too_long" in str(fields["retention_days"])
