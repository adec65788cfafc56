"""The Preferences page (/settings/): a person's custom instructions."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from preferences.selectors import custom_instructions_enabled, instructions_of
from preferences.services import PreferencesRefused, preferences_save


@require_http_methods(["GET", "POST"])
def preferences_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    error = code = ""
    if request.method == "POST":
        text = request.POST.get("instructions", "")
        try:
            preferences_save(actor=user, instructions=text)
        except PreferencesRefused as exc:
            error, code = exc.message, exc.code
        else:
            messages.success(
                request, "Your instructions are saved." if text.strip() else "Instructions cleared."
            )
            return redirect("preferences")
    else:
        text = instructions_of(user)
    return render(
        request,
        "preferences/settings.html",
        {
            "instructions": text,
            "enabled": custom_instructions_enabled(),
            "max_chars": settings.CHAT_CUSTOM_INSTRUCTIONS_MAX_CHARS,
            "error": error,
            "error_code": code,
        },
        status=400 if error else 200,
    )
