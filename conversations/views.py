"""The chat page: the user's conversations, one conversation, the composer."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from conversations import selectors, services
from conversations.errors import ChatError
from costs.selectors import model_choices
from providers.registry import default_model_for, models_for_user


def _before_param(request: HttpRequest) -> UUID | None:
    """The `before` cursor of the conversation list: a conversation id, or absent."""
    raw = request.GET.get("before")
    if raw is None:
        return None
    try:
        return UUID(raw[:36])
    except ValueError:
        raise ValueError("The 'before' parameter must be a conversation id.") from None


def _bad_request(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "error.html", {"title": "Bad request", "reason": reason}, status=400)


@require_GET
def chat(request: HttpRequest, public_id: UUID | None = None) -> HttpResponse:
    user = request.user
    try:
        page = selectors.conversation_list(
            user=user,  # type: ignore[arg-type]
            before=_before_param(request),
        )
    except ChatError:
        return _bad_request(request, "That page of conversations does not exist.")
    except ValueError as exc:
        return _bad_request(request, str(exc))
    snapshot = None
    if public_id is not None:
        try:
            snapshot = selectors.conversation_snapshot(user=user, public_id=public_id)  # type: ignore[arg-type]
        except ChatError:
            raise Http404("No such conversation.") from None
    models = models_for_user(user)  # type: ignore[arg-type]
    default = default_model_for(user, models)  # type: ignore[arg-type]
    current_model = default.key if default else ""
    if snapshot and snapshot["messages"]:
        used = snapshot["messages"][-1]["model"]
        if any(model.key == used for model in models):
            current_model = used
    return render(
        request,
        "conversations/chat.html",
        {
            "conversations": page.conversations,
            "older_page": page.next_before,
            "current": snapshot,
            "current_id": str(public_id) if public_id else "",
            "models": models,
            # The picker shows each model's description and price (costs.selectors).
            "model_choices": model_choices(models),
            "budgets": services.budget_frames(user),  # type: ignore[arg-type]
            "current_model": current_model,
            "chat_config": {
                "conversation": str(public_id) if public_id else None,
                "maxMessageChars": settings.CHAT_MAX_MESSAGE_CHARS,
                "socketPath": "/ws/chat/",
                "demoModels": [model.key for model in models if model.is_demo],
            },
        },
    )
