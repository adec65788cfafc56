"""Security headers that Django does not set by itself.

`ContentSecurityPolicyMiddleware` is django-csp's middleware (policy in
`settings.CONTENT_SECURITY_POLICY`) plus one addition per response: the WebSocket origin of
the page's own host (`wss://host` over HTTPS, `ws://host` otherwise) in `connect-src`.
CSP Level 3 browsers already let 'self' cover it; naming it keeps older ones working and
allows nothing beyond the host that served the page.

`SecurityHeadersMiddleware` adds `Permissions-Policy`: the app uses none of the powerful
browser features, so all of them are off, also for anything that might be framed. And it
marks every response to a signed-in person `Cache-Control: no-store` unless the view chose
its own caching: conversations must not stay in the browser's cache, where the back button
or the next person at a shared computer would find them after sign-out.
"""

from __future__ import annotations

from collections.abc import Callable

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import patch_cache_control

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
        "interest-cohort",
    )
)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        try:
            host = request.get_host()
        except DisallowedHost:
            return parts  # the 400 for a foreign Host header gets the base policy
        origin = f"{'wss' if request.is_secure() else 'ws'}://{host}"
        update = dict(parts.update or {})
        connect_src = update.get("connect-src") or []
        update["connect-src"] = [*connect_src, origin]
        parts.update = update
        return parts


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.permissions_policy = getattr(settings, "PERMISSIONS_POLICY", PERMISSIONS_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.permissions_policy and "Permissions-Policy" not in response:
            response["Permissions-Policy"] = self.permissions_policy
        user = getattr(request, "user", None)  # static files never reach authentication
        if user is not None and user.is_authenticated and "Cache-Control" not in response:
            patch_cache_control(response, no_store=True, private=True)
        return response
