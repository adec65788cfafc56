"""Per-IP rate limit on the login form, in front of axes' per-account lockout.

Axes locks one account after repeated failures; it does not stop one address from trying
a few passwords on each of many accounts. This limit counts every POST to the login view
per client IP address (enterprise_ai.client_ip) per minute, before the password is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render

from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record
from enterprise_ai import ratelimit
from enterprise_ai.client_ip import client_ip

WINDOW_SECONDS = 60

View = Callable[..., HttpResponseBase]


def login_rate_limited(view: View) -> View:
    """Wrap the login view: over the limit a POST gets 429 with Retry-After, not the view.

    The first refused attempt of each address and window is audited (auth.rate_limited);
    the rest are not, so the limiter cannot be used to flood the audit trail.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        limit = settings.LOGIN_RATE_LIMIT_PER_MINUTE
        ip = client_ip(request) or "unknown"
        decision = ratelimit.hit(f"login:{ip}", limit=limit, window_seconds=WINDOW_SECONDS)
        if decision.allowed:
            return view(request, *args, **kwargs)
        if decision.first_refusal:
            audit_record(
                action=AuditAction.LOGIN_RATE_LIMITED,
                actor=None,
                outcome=AuditOutcome.DENIED,
                details={"limit": limit, "window_seconds": WINDOW_SECONDS},
            )
        response = render(
            request,
            "registration/rate_limited.html",
            {"retry_after": decision.retry_after},
            status=429,
        )
        response["Retry-After"] = str(decision.retry_after)
        return response

    return login_not_required(wrapper)
