"""Idle timeout and absolute lifetime of signed-in sessions (accounts/sessions.py)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse

from accounts import sessions
from accounts.services import session_expire


class SessionLifetimeMiddleware:
    """Signs out a session past its idle or absolute limit (audited) and sends HTML requests
    to the sign-in page with a message; other requests get 401.

    Runs after the session, authentication, audit-context and message middleware. Activity
    is written to the session at most once a minute, not on every request.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            now = sessions.now_seconds()
            reason = sessions.expiry_reason(request.session, now=now)
            if reason is not None:
                session_expire(request=request, reason=reason, now=now)
                return self.expired_response(request)
            sessions.activity_touch(request.session, now=now)
        return self.get_response(request)

    def expired_response(self, request: HttpRequest) -> HttpResponse:
        if request.accepts("text/html"):
            messages.warning(request, sessions.EXPIRED_MESSAGE)
            next_url = request.get_full_path() if request.method == "GET" else None
            return redirect_to_login(next_url or "/")
        return JsonResponse(
            {"error": "session_expired", "reason": sessions.EXPIRED_MESSAGE}, status=401
        )
