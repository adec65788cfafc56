from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseServerError
from django.template import loader
from django.utils import timezone
from django.views.decorators.csrf import requires_csrf_token
from django.views.decorators.http import require_GET

from observability import logcontext


@login_not_required
@require_GET
def security_txt(request: HttpRequest) -> HttpResponse:
    """/.well-known/security.txt (RFC 9116): where to report a vulnerability.

    Served only when SECURITY_CONTACT is set; it always expires a year ahead, since it is
    generated from the live configuration.
    """
    if not settings.SECURITY_CONTACT:
        raise Http404("No security contact is configured.")
    expires = (timezone.now() + timedelta(days=365)).replace(microsecond=0)
    lines = [
        f"Contact: {settings.SECURITY_CONTACT}",
        f"Expires: {expires.isoformat().replace('+00:00', 'Z')}",
        "Preferred-Languages: en",
        f"Canonical: {request.build_absolute_uri('/.well-known/security.txt')}",
    ]
    if settings.SECURITY_POLICY_URL:
        lines.append(f"Policy: {settings.SECURITY_POLICY_URL}")
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")


@requires_csrf_token
def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: the page shows an error id, never the error; the log line of the error
    (django.request, logged after this view) carries the same id as `error_id`."""
    error_id = logcontext.new_error_id()
    request.error_id = error_id  # type: ignore[attr-defined]
    # A plain context (no context processors): the page must not fail for what failed.
    body = loader.get_template("500.html").render({"error_id": error_id})
    response = HttpResponseServerError(body)
    response["X-Error-ID"] = error_id
    return response
