from __future__ import annotations

import math
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


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
