"""The REST API, version 1 (docs/api.md), built with django-ninja: pydantic schemas, an
OpenAPI 3.1 document at /api/v1/openapi.json with a browsable page at /api/v1/docs, async
views. Every view is an entry point and stays thin: it parses, calls one service or selector
of the governance path, and shapes the answer.

Authentication is `Authorization: Bearer <API key>` only. Session cookies are ignored (a
browser's session never authorises an API call), so there is no CSRF to defend against.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import datetime
from typing import Any

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import re_path
from ninja import NinjaAPI, Schema
from ninja.security import HttpBearer
from pydantic import Field, StrictBool, StrictInt, StrictStr

from accounts.models import ApiKey, User
from api import replies
from api.errors import ApiError, error_response, install_handlers
from audit import context as audit_context
from conversations import selectors, services
from conversations.models import Conversation, Message
from conversations.services import ReplyOptions
from costs.services import budget_status_for, format_amount
from providers.registry import default_model_for, models_for_user
from retention import selectors as retention_selectors
from retention import services as retention_services

api = NinjaAPI(
    title="Enterprise AI",
    version="1",
    description="Approved models under the company's governance. See docs/api.md.",
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
install_handlers(api)


# --- Authentication ---------------------------------------------------------------------------


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <key>`, checked for the scope the endpoint needs."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    async def __call__(self, request: HttpRequest) -> ApiKey:
        return await replies.key_authenticate(request, self.scope)

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        raise NotImplementedError  # __call__ does the work, asynchronously


def _owner(request: HttpRequest) -> User:
    key: ApiKey = request.auth  # type: ignore[attr-defined]
    return key.owner


# --- Schemas ----------------------------------------------------------------------------------


class ErrorBody(Schema):
    code: str
    message: str
    error_id: str | None = None


class ErrorOut(Schema):
    error: ErrorBody


class ModelOut(Schema):
    id: str
    display_name: str
    provider: str
    context_window: int
    max_output_tokens: int


class ModelsOut(Schema):
    models: list[ModelOut]


class ChatIn(Schema):
    message: StrictStr = Field(min_length=1, description="The user's message.")
    conversation_id: uuid.UUID | None = Field(None, description="Continue this conversation.")
    model: StrictStr | None = Field(None, description="A model id from GET /models.")
    system_prompt: StrictStr | None = Field(
        None,
        description="Instructions for this turn. Stored with the message (under `System:`) and "
        "screened by the guardrails like it; the organisation's own system prompt still comes "
        "first.",
    )
    max_output_tokens: StrictInt | None = Field(
        None, ge=1, description="At most this many tokens in the reply (never above the model's)."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    stream: StrictBool = Field(False, description="Answer with Server-Sent Events.")


class ConversationIn(Schema):
    title: StrictStr = Field("", max_length=200, description="Empty: named by its first message.")
    stream: StrictBool = Field(False, description="With `message`: as in POST /chat.")
    model: StrictStr | None = Field(None, description="A model id from GET /models.")
    message: StrictStr | None = Field(
        None,
        description="An initial message: the conversation is created with it and the answer is "
        "POST /chat's (needs the `chat` scope as well).",
    )
    system_prompt: StrictStr | None = Field(None, description="As in POST /chat.")
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    retention_days: StrictInt | None = Field(
        None,
        description="Erase this conversation's content this many days after its creation "
        "(whatever its activity; legal holds still win). From 1 to RETENTION_API_MAX_DAYS "
        "(3650 by default), and never longer than a retention policy covering you keeps "
        "conversations: otherwise 400 `retention_days_invalid` or `retention_days_too_long`.",
        json_schema_extra={"minimum": 1},
    )


class Usage(Schema):
    input_tokens: int | None
    output_tokens: int | None


class ChatOut(Schema):
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    message: str
    model: str
    status: str
    usage: Usage
    cost: str | None = Field(description="A decimal string in `currency`.")
    currency: str
    cost_estimated: bool


class ConversationOut(Schema):
    id: uuid.UUID
    title: str
    source: str
    updated_at: datetime


class ConversationsOut(Schema):
    conversations: list[ConversationOut]
    next: uuid.UUID | None = Field(description="Pass as `before` for the next (older) page.")


class MessageUsage(Usage):
    cost: str | None
    currency: str
    estimated: bool


class MessageOut(Schema):
    id: uuid.UUID
    role: str
    content: str
    status: str
    model: str
    created_at: datetime
    usage: MessageUsage | None


class ConversationDetailOut(ConversationOut):
    expires_at: datetime | None = Field(
        None,
        description="When its content will be erased (the `retention_days` it was created "
        "with), or null: the organisation's retention policies apply.",
    )
    messages: list[MessageOut]


class BudgetOut(Schema):
    name: str
    period: str
    spent: str
    limit: str
    remaining: str
    currency: str
    resets_at: datetime
    blocking: bool


class UsageOut(Schema):
    budgets: list[BudgetOut]


ERRORS: dict[int, Any] = {
    status: ErrorOut for status in (400, 401, 402, 403, 404, 409, 413, 422, 429, 500, 503, 504)
}


# --- Endpoints --------------------------------------------------------------------------------


@api.get(
    "/models", response={200: ModelsOut, **ERRORS}, auth=ApiKeyAuth("models:read"), tags=["models"]
)
async def models_list(request: HttpRequest) -> dict[str, Any]:
    """The models the key's owner may use."""
    models = await replies.db(models_for_user)(_owner(request))
    return {
        "models": [
            {
                "id": model.key,
                "display_name": model.display_name,
                "provider": model.provider,
                "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
            }
            for model in models
        ]
    }


def _sse_event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event: its name, and its `data` line as JSON of schema `data`."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


_TEXT = {"type": "string"}
# With `stream: true` the 200 answer is Server-Sent Events rather than JSON; each event is
# described (as OpenAPI 3.1 tools read text/event-stream): its name and its JSON data.
SSE_ANSWER = {
    "responses": {
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {
                        "description": "`accepted` {conversation_id, message_id}, `delta` "
                        "{text} …, `notice` {message}, then `done` (the JSON answer) or `error` "
                        "{code, message}.",
                        "oneOf": [
                            _sse_event(
                                "accepted",
                                {
                                    "type": "object",
                                    "required": ["conversation_id", "message_id"],
                                    "properties": {
                                        "conversation_id": {"type": "string", "format": "uuid"},
                                        "message_id": {"type": "string", "format": "uuid"},
                                    },
                                },
                            ),
                            _sse_event(
                                "delta",
                                {
                                    "type": "object",
                                    "required": ["text"],
                                    "properties": {"text": _TEXT},
                                },
                            ),
                            _sse_event(
                                "notice",
                                {
                                    "type": "object",
                                    "required": ["message"],
                                    "properties": {"message": _TEXT},
                                },
                            ),
                            _sse_event("done", {"$ref": "#/components/schemas/ChatOut"}),
                            _sse_event(
                                "error",
                                {
                                    "type": "object",
                                    "required": ["code", "message"],
                                    "properties": {"code": _TEXT, "message": _TEXT},
                                },
                            ),
                        ],
                    }
                }
            }
        }
    }
}


@api.post(
    "/chat",
    response={200: ChatOut, **ERRORS},
    auth=ApiKeyAuth("chat"),
    tags=["chat"],
    openapi_extra=SSE_ANSWER,
)
async def chat(request: HttpRequest, payload: ChatIn) -> Any:
    """Send a message and get the reply, whole or (`stream: true`) as Server-Sent Events:
    `delta` {text} …, then `done` (this endpoint's JSON answer) or `error` {code, message}."""
    owner = _owner(request)
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        return await _chat_turn(request, payload, conversation_id=payload.conversation_id)


async def _chat_turn(
    request: HttpRequest,
    payload: ChatIn | ConversationIn,
    *,
    conversation_id: uuid.UUID | None,
    retention_days: int | None = None,
) -> Any:
    """One turn of POST /chat (or POST /conversations with a message), whole or streamed;
    `retention_days` (checked) gives the new conversation its expiry."""
    message = payload.message or ""
    text = (
        replies.folded([("system", payload.system_prompt), ("user", message)])
        if payload.system_prompt
        else message
    )
    turn = await replies.turn_start(
        owner=_owner(request),
        text=text,
        model_key=payload.model,
        conversation_id=conversation_id,
        api_key=request.auth,  # type: ignore[attr-defined]
        options=ReplyOptions(
            max_output_tokens=payload.max_output_tokens, temperature=payload.temperature
        ),
    )
    if retention_days is not None:
        await replies.db(_expiry_set)(turn.conversation_id, retention_days)
    if getattr(payload, "stream", False):
        response = StreamingHttpResponse(
            replies.turn_stream(turn), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response
    return await replies.turn_wait(turn)


@api.post(
    "/conversations",
    response={201: ConversationDetailOut, 200: ChatOut, **ERRORS},
    auth=ApiKeyAuth("conversations:write"),
    tags=["conversations"],
    openapi_extra=SSE_ANSWER,
)
async def conversation_create(request: HttpRequest, payload: ConversationIn) -> Any:
    """Start a conversation: empty (201, the new conversation), or with an initial `message`
    (200, the reply as POST /chat answers it; the key needs the `chat` scope too)."""
    owner = _owner(request)
    key: ApiKey = request.auth  # type: ignore[attr-defined]
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        days = None
        if payload.retention_days is not None:
            days = await replies.db(_retention_days)(owner, payload.retention_days)
        if payload.message is not None:
            if ApiKey.Scope.CHAT not in (key.scopes or []):
                raise ApiError(403, "scope_missing", "This API key does not have the 'chat' scope.")
            return await _chat_turn(request, payload, conversation_id=None, retention_days=days)
        conversation = await replies.db(_conversation_create)(owner, payload, days)
        return 201, await replies.db(_conversation_detail)(owner, conversation.public_id)


def _retention_days(owner: User, days: int) -> int:
    try:
        return retention_services.retention_days_check(owner=owner, days=days)
    except retention_services.RetentionError as exc:
        raise ApiError(400, exc.code, exc.message) from None


def _expiry_set(conversation_id: uuid.UUID, days: int) -> None:
    conversation = Conversation.objects.get(public_id=conversation_id)
    retention_services.conversation_expiry_set(conversation=conversation, days=days)


def _conversation_create(owner: User, payload: ConversationIn, days: int | None) -> Conversation:
    model_key = payload.model
    if model_key is None:
        model = default_model_for(owner)
        if model is None:
            raise ApiError(403, "model_unavailable", "No model is available to you.")
        model_key = model.key
    conversation = services.conversation_create(
        actor=owner, title=payload.title, model_key=model_key, source=Conversation.Source.API
    )
    # Its own transaction, after the creation's: a refusal inside conversation_create is
    # audited and must not be rolled back with anything of ours.
    if days is not None:
        retention_services.conversation_expiry_set(conversation=conversation, days=days)
    return conversation


@api.delete(
    "/conversations/{conversation_id}",
    response={204: None, **ERRORS},
    auth=ApiKeyAuth("conversations:write"),
    tags=["conversations"],
)
async def conversation_delete(request: HttpRequest, conversation_id: uuid.UUID) -> Any:
    """Delete a conversation of the owner's: its text is erased and it is gone from every
    list and answer (what it cost stays in the ledger, what happened in the audit trail).
    Refused with 409 `legal_hold` while it or its owner is under legal hold, 409 `busy` while
    a reply is being written; another person's (or none) is 404 and audited."""
    owner = _owner(request)
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        await replies.db(services.conversation_delete)(actor=owner, public_id=conversation_id)
    return 204, None


@api.get(
    "/conversations",
    response={200: ConversationsOut, **ERRORS},
    auth=ApiKeyAuth("conversations:read"),
    tags=["conversations"],
)
async def conversations_list(request: HttpRequest, before: uuid.UUID | None = None) -> Any:
    """The owner's conversations from every entry point, most recently active first; pass
    `next` as `before` for the next page."""
    owner = _owner(request)
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        return await replies.db(_conversation_page)(owner, before)


def _conversation_page(owner: User, before: uuid.UUID | None) -> dict[str, Any]:
    page = selectors.conversation_list(
        user=owner, before=before, sources=tuple(Conversation.Source.values)
    )
    # The selector loads only what the chat list shows; the sources in one more query.
    sources = dict(
        Conversation.objects.filter(pk__in=[c.pk for c in page.conversations]).values_list(
            "pk", "source"
        )
    )
    return {
        "conversations": [
            {
                "id": c.public_id,
                "title": c.title,
                "source": sources.get(c.pk, ""),
                "updated_at": c.updated_at,
            }
            for c in page.conversations
        ],
        "next": page.next_before,
    }


@api.get(
    "/conversations/{conversation_id}",
    response={200: ConversationDetailOut, **ERRORS},
    auth=ApiKeyAuth("conversations:read"),
    tags=["conversations"],
)
async def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> Any:
    """A conversation of the owner's with its messages. Another person's (or none): 404, and
    the attempt is in the audit trail."""
    owner = _owner(request)
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        return await replies.db(_conversation_detail)(owner, conversation_id)


def _conversation_detail(owner: User, conversation_id: uuid.UUID) -> dict[str, Any]:
    conversation = selectors.conversation_get_owned(user=owner, public_id=conversation_id)
    messages = []
    for message in selectors.message_list(conversation=conversation):
        if message.superseded_by_id is not None:
            continue  # an earlier version (regenerated or edited in the chat): not current
        finished_reply = message.role == Message.Role.ASSISTANT and message.status in (
            Message.Status.COMPLETE,
            Message.Status.CANCELLED,
        )
        messages.append(
            {
                "id": message.public_id,
                "role": message.role,
                "content": message.content,
                "status": message.status,
                "model": message.model,
                "created_at": message.created_at,
                "usage": selectors.reply_usage(message) if finished_reply else None,
            }
        )
    return {
        "id": conversation.public_id,
        "title": conversation.title,
        "source": conversation.source,
        "updated_at": conversation.updated_at,
        "expires_at": retention_selectors.conversation_expiry(conversation=conversation),
        "messages": messages,
    }


@api.get(
    "/usage", response={200: UsageOut, **ERRORS}, auth=ApiKeyAuth("usage:read"), tags=["usage"]
)
async def usage(request: HttpRequest) -> Any:
    """The owner's budgets in the current period: spent, limit, what is left, when it resets."""
    statuses = await replies.db(budget_status_for)(
        _owner(request),
        api_key=request.auth,  # type: ignore[attr-defined]
    )
    return {
        "budgets": [
            {
                "name": status.name,
                "period": status.period,
                "spent": format_amount(status.spent),
                "limit": format_amount(status.limit),
                "remaining": format_amount(status.remaining),
                "currency": settings.COSTS_CURRENCY,
                "resets_at": status.resets_at,
                "blocking": status.blocking,
            }
            for status in statuses
        ]
    }


def _json_not_allowed(view: Any) -> Any:
    """`view` with ninja's plain-text 405 answered in the API's error shape (Allow kept)."""

    @functools.wraps(view)  # keeps ninja's attributes (csrf_exempt: keys, not cookies)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = await view(request, *args, **kwargs)
        if response.status_code != 405:
            return response
        allowed = response.get("Allow", "")
        answer = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here. Use {allowed}."
        )
        answer["Allow"] = allowed
        return answer

    return wrapped


@login_not_required
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other path under /api/v1/: the API's 404, not the site's HTML page."""
    return error_response(404, "not_found", "There is no such endpoint. See /api/v1/docs.")


def urls() -> tuple[list[Any], str, str]:
    """The API's URL patterns, open to requests without a session (LoginRequiredMiddleware):
    every endpoint authenticates by API key itself, and the schema and docs are public. A
    wrong method or path is answered in the API's error shape."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        if asyncio.iscoroutinefunction(pattern.callback):
            pattern.callback = markcoroutinefunction(_json_not_allowed(pattern.callback))
        pattern.callback.login_required = False  # type: ignore[union-attr]
    patterns = [*patterns, re_path(r"^(?P<rest>.*)$", not_found)]
    return patterns, app_name, namespace
