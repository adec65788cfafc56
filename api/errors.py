"""The REST API's errors: one JSON shape, `{"error": {"code": ..., "message": ...}}`, and one
table from the chat's error codes to HTTP statuses. Never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from accounts.api_keys import ApiKeyRefused
from conversations.errors import ChatError
from observability import logcontext

logger = logging.getLogger(__name__)

# conversations.errors.ChatError codes (admission refusals) and failed replies' codes.
CHAT_ERROR_STATUS: dict[str, int] = {
    "invalid": 422,
    "too_large": 413,
    "tools_unsupported": 422,
    "model_unavailable": 403,  # refused at admission: unknown, disabled or not permitted
    "not_found": 404,
    "busy": 409,
    "legal_hold": 409,
    "guardrail_blocked": 400,
    "rate_limited": 429,
    "budget_exceeded": 402,
    "encryption_unavailable": 503,
    "internal": 500,
}
# A reply that failed after it was accepted: the provider could not produce it.
REPLY_FAILED_STATUS = 503

KEY_REFUSED_STATUS: dict[str, int] = {
    "invalid_key": 401,
    "revoked_key": 401,
    "expired_key": 401,
    "missing_key": 401,
    "inactive_owner": 403,
    "scope_missing": 403,
    "rate_limited": 429,
}


class ApiError(Exception):
    """An error the API answers with as it is (status, code, message)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def error_response(
    status: int, code: str, message: str, *, retry_after: int | None = None, error_id: str = ""
) -> JsonResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if error_id:
        body["error_id"] = error_id
    response = JsonResponse({"error": body}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    if error_id:
        response["X-Error-ID"] = error_id
    return response


def chat_error_status(code: str) -> int:
    return CHAT_ERROR_STATUS.get(code, REPLY_FAILED_STATUS)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        # ninja's locations start with where the value came from ("body", "query", "path").
        where = ".".join(str(part) for part in error.get("loc", ())[1:] if part != "payload")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is not valid."


def install_handlers(api: NinjaAPI) -> None:
    """Every exception the API's views may raise, answered in the one shape."""

    def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return error_response(exc.status, exc.code, exc.message, retry_after=exc.retry_after)

    def on_chat_error(request: HttpRequest, exc: ChatError) -> HttpResponse:
        if exc.code == "internal":
            return error_response(500, exc.code, exc.reason, error_id=exc.error_id)
        return error_response(
            chat_error_status(exc.code), exc.code, exc.reason, retry_after=exc.retry_after
        )

    def on_key_refused(request: HttpRequest, exc: ApiKeyRefused) -> HttpResponse:
        return error_response(
            KEY_REFUSED_STATUS.get(exc.code, 401),
            exc.code,
            exc.message,
            retry_after=exc.retry_after,
        )

    def on_authentication(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return error_response(401, "missing_key", "Send an API key: Authorization: Bearer <key>.")

    def on_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return error_response(422, "invalid", _validation_message(list(exc.errors)))

    def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error_response(exc.status_code, code, str(exc.message))

    def on_404(request: HttpRequest, exc: Http404) -> HttpResponse:
        return error_response(404, "not_found", "Not found.")

    def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        error_id = logcontext.new_error_id()
        # The type only: an exception's text may quote the request (docs/operations.md).
        logger.error(
            "API request %s failed: %s",
            request.path[:200],
            type(exc).__name__,
            extra={"error_id": error_id, "request_id": getattr(request, "request_id", "")},
        )
        message = f"Something went wrong. If it keeps happening, quote error id {error_id}."
        return error_response(500, "internal", message, error_id=error_id)

    handlers: list[tuple[type[Exception], Callable[[HttpRequest, Any], HttpResponse]]] = [
        (ApiError, on_api_error),
        (ChatError, on_chat_error),
        (ApiKeyRefused, on_key_refused),
        (AuthenticationError, on_authentication),
        (ValidationError, on_validation),
        (HttpError, on_http_error),
        (Http404, on_404),
        (Exception, on_unexpected),
    ]
    for exc_class, handler in handlers:
        api.add_exception_handler(exc_class, handler)
