"""The session engine (SESSION_ENGINE = "accounts.session_store"): Django's database sessions,
stored in `accounts.UserSession` with the signed-in user's id in an indexed column."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore


class SessionStore(DatabaseSessionStore):
    @classmethod
    def get_model_class(cls) -> Any:
        from accounts.models import UserSession

        return UserSession

    def create_model_instance(self, data: dict[str, Any]) -> Any:
        instance: Any = super().create_model_instance(data)
        try:
            instance.user_id = int(data[SESSION_KEY])
        except (KeyError, TypeError, ValueError):
            instance.user_id = None
        return instance
