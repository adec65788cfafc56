"""The console's audit banner: every console page warns while the latest verification of
the audit chain failed or is overdue (audit.selectors.verification_status).

Lazy: nothing is read unless a template asks, which only the console's base template does,
and only for people who may open the console.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from audit.selectors import VerificationStatus, verification_status


def _status_for(request: HttpRequest) -> VerificationStatus | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_active or not user.has_perm("accounts.access_console"):
        return None
    status = verification_status()
    return status if status.alert else None


def audit_verification(request: HttpRequest) -> dict[str, Any]:
    return {"audit_verification_alert": SimpleLazyObject(lambda: _status_for(request))}
