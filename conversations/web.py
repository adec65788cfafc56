"""The chat page's conversation actions, for fetch() callers: rename, delete, search, export.

Session-authenticated (LoginRequiredMiddleware) and CSRF-protected like every page; errors
answer `{"code", "reason"}` as JSON with a fitting status, never a stack trace. Each view
parses input, calls one service and shapes the answer.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from conversations import export, search, services
from conversations.errors import ChatError

BODY_MAX_BYTES = 4096
_STATUS = {
    "invalid": 400,
    "too_large": 400,
    "not_found": 404,
    "legal_hold": 409,
    "busy": 409,
    "rate_limited": 429,
}


def _error(error: ChatError) -> JsonResponse:
    response = JsonResponse(
        {"code": error.code, "reason": error.reason}, status=_STATUS.get(error.code, 400)
    )
    if error.retry_after:
        response["Retry-After"] = str(error.retry_after)
    return response


def _payload(request: HttpRequest) -> dict[str, Any]:
    """The JSON object (or form fields) of a POST. Raises ChatError("invalid"/"too_large")."""
    if len(request.body) > BODY_MAX_BYTES:
        raise ChatError("too_large", "The request is too large.")
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            raise ChatError("invalid", "The request is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ChatError("invalid", "The request must be a JSON object.")
        return data
    return dict(request.POST.items())


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]  # LoginRequiredMiddleware


@require_POST
def conversation_rename(request: HttpRequest, public_id: UUID) -> JsonResponse:
    try:
        title = _payload(request).get("title")
        conversation = services.conversation_rename(
            actor=_user(request), public_id=public_id, title=title
        )
    except ChatError as exc:
        return _error(exc)
    return JsonResponse({"conversation": str(conversation.public_id), "title": conversation.title})


@require_POST
def conversation_delete(request: HttpRequest, public_id: UUID) -> JsonResponse:
    try:
        services.conversation_delete(actor=_user(request), public_id=public_id)
    except ChatError as exc:
        return _error(exc)
    return JsonResponse({"conversation": str(public_id), "deleted": True})


@require_GET
def conversation_search(request: HttpRequest) -> JsonResponse:
    user = _user(request)
    retry_after = search.search_rate_limited(user)
    if retry_after:
        return _error(
            ChatError(
                "rate_limited",
                "Too many searches in a minute. Please wait a moment.",
                retry_after=retry_after,
            )
        )
    try:
        hits = search.conversation_search(user=user, query=request.GET.get("q", ""))
    except ChatError as exc:
        return _error(exc)
    return JsonResponse(
        {
            "results": [
                {
                    "conversation": hit.conversation,
                    "title": hit.title,
                    "snippet": hit.snippet,
                    "updated_at": hit.updated_at.isoformat(),
                    "message": hit.message,
                    "url": reverse("conversation", args=[hit.conversation])
                    + (f"#m-{hit.message}" if hit.message else ""),
                }
                for hit in hits
            ]
        }
    )


@require_GET
def conversation_export(request: HttpRequest, public_id: UUID) -> HttpResponse:
    try:
        exported = export.conversation_export(actor=_user(request), public_id=public_id)
    except ChatError as exc:
        return _error(exc)
    response = HttpResponse(exported.text, content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=exported.filename
    )
    response["Cache-Control"] = "no-store"
    return response
