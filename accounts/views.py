"""Pages of the accounts app: the lockout page and "My API keys"."""

from __future__ import annotations

import math
import uuid
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Max
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.api_keys import api_key_create, api_key_revoke
from accounts.forms import ApiKeyCreateForm
from accounts.models import ApiKey
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any = None
) -> HttpResponse:
    """The page a locked-out login attempt gets (AXES_LOCKOUT_CALLABLE): a plain message
    saying when signing in will work again (the cool-off runs from the last failed attempt)."""
    cool_off = get_cool_off(request)
    minutes = math.ceil(cool_off.total_seconds() / 60) if cool_off else None
    retry_at = None
    if cool_off:
        attempts = AxesDatabaseHandler().get_user_attempts(request, credentials)
        latest = max(
            (found for qs in attempts if (found := qs.aggregate(t=Max("attempt_time"))["t"])),
            default=None,
        )
        retry_at = timezone.localtime((latest or timezone.now()) + cool_off)
        minutes = max(1, math.ceil((retry_at - timezone.now()).total_seconds() / 60))
    return render(
        request,
        "registration/locked_out.html",
        {"cooloff_minutes": minutes, "retry_at": retry_at},
        status=429,
    )


# --- My API keys ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """The person's own API keys: list them, create one (its key shown once), revoke one."""
    user: Any = request.user
    form = ApiKeyCreateForm(request.POST or None)
    created_key = None
    if request.method == "POST" and form.is_valid():
        try:
            _key, created_key = api_key_create(
                owner=user,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=form.cleaned_data["expires"],
                actor=user,
                via="page",
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            # Rendered, not redirected: the key exists only in this response.
            form = ApiKeyCreateForm()
    keys = ApiKey.objects.filter(owner=user).order_by("-created_at")
    response = render(
        request,
        "accounts/api_keys.html",
        {
            "form": form,
            "keys": keys,
            "created_key": created_key,
            "now": timezone.now(),
        },
        status=400 if request.method == "POST" and created_key is None else 200,
    )
    response["Cache-Control"] = "no-store"  # the page may hold a key shown once
    return response


@login_required
@require_POST
def api_key_revoke_view(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """Revoke one of the person's own keys. Someone else's key is a 404, audited as denied."""
    user: Any = request.user
    key = ApiKey.objects.select_related("owner").filter(public_id=public_id).first()
    if key is None or key.owner_id != user.pk:
        audit_record(
            action=AuditAction.API_KEY_REFUSED,
            outcome=AuditOutcome.DENIED,
            target=(TargetType.API_KEY, str(public_id)),
            details={"code": "not_owner" if key is not None else "not_found", "via": "page"},
        )
        raise Http404("No such API key.")
    api_key_revoke(key=key, actor=user)
    messages.success(request, f"Revoked {key.name} ({key.prefix}).")
    return redirect("api_keys")
