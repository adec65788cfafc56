"""Gives every HTTP request an id and makes it the audit context of the code it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from audit import context as audit_context


class AuditContextMiddleware:
    """Binds the request as the audit context; echoes the request id in X-Request-ID.

    With AUDIT_TRUST_REQUEST_ID_HEADER (set it only behind a proxy that sets or strips the
    header), a well-formed X-Request-ID is kept so the proxy's logs and the audit trail share
    one id; otherwise every request gets a new one, so clients cannot choose their ids.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = (
            request.headers.get("X-Request-ID") if settings.AUDIT_TRUST_REQUEST_ID_HEADER else None
        )
        request_id = audit_context.request_id_from(given)
        request.request_id = request_id  # type: ignore[attr-defined]
        with audit_context.bind_request(request):
            response: Any = self.get_response(request)
        response[audit_context.REQUEST_ID_HEADER] = request_id
        return response
