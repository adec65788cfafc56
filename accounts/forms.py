"""Forms of the accounts pages: the sign-in form and the "My API keys" form."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from accounts.models import ApiKey


class SignInForm(AuthenticationForm):
    """Django's sign-in form, refusing service accounts: they act only through API keys."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if getattr(user, "is_service_account", False):
            raise forms.ValidationError(
                "This is a service account: it cannot sign in, it is used through API keys.",
                code="service_account",
            )


_RELATIVE = re.compile(r"^(\d{1,4})d$")


def expiry_parse(value: str) -> datetime | None:
    """`30d` (days from now), `2027-01-31` (the end of that day, server time zone) or an
    ISO 8601 date and time; "" or "never" means no expiry. Raises ValueError otherwise."""
    value = value.strip()
    if value in ("", "never"):
        return None
    relative = _RELATIVE.match(value)
    if relative:
        return timezone.now() + timedelta(days=int(relative.group(1)))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an expiry: use a number of days (30d) or a date (2027-01-31)."
        ) from None
    if len(value) == 10:  # a date alone: the key works until the end of that day
        parsed = datetime.combine(parsed.date(), time.max)
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


class ApiKeyCreateForm(forms.Form):
    """A key of one's own: a name, its scopes and an optional expiry."""

    EXPIRY_CHOICES = [("30d", "In 30 days"), ("90d", "In 90 days"), ("365d", "In a year"),
                      ("never", "Never")]  # fmt: skip

    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90d")

    def clean_expires(self) -> datetime | None:
        return expiry_parse(self.cleaned_data["expires"])
