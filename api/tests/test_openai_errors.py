"""The OpenAI-compatible endpoint's error shape through the full ASGI stack in process: what
the SDK cannot send (a body that is not JSON, another method), and an unexpected failure as a
500 with an error id and nothing of the exception."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import AsyncClient

from accounts.api_keys import api_key_create
from api import openai as openai_api

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def headers(owner: Any) -> dict[str, str]:
    key = api_key_create(owner=owner, name="tests", scopes=["chat", "models:read"], actor=owner)[1]
    return {"Authorization": f"Bearer {key}"}


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


async def test_a_body_that_is_not_json_is_400(headers: dict[str, str]) -> None:
    response = await AsyncClient().post(
        "/v1/chat/completions", "{nope", content_type="application/json", headers=headers
    )
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


async def test_another_method_is_405_in_the_error_shape(headers: dict[str, str]) -> None:
    response = await AsyncClient().get("/v1/chat/completions", headers=headers)
    assert response.status_code == 405
    error_of(response)


async def test_an_unknown_path_is_404_in_the_error_shape(headers: dict[str, str]) -> None:
    response = await AsyncClient().post("/v1/embeddings", headers=headers)
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_url"


def test_a_session_alone_is_401(client: Any, owner: Any) -> None:
    client.force_login(owner)
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


async def test_an_unexpected_failure_is_500_with_an_error_id_and_no_details(
    headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(user: Any) -> Any:
        raise RuntimeError("password=hunter2 at line 12")

    monkeypatch.setattr(openai_api, "models_for_user", broken)
    response = await AsyncClient().get("/v1/models", headers=headers)
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "server_error" and "error id" in error["message"]
    assert "hunter2" not in response.content.decode()
