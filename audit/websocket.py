"""The chat socket's Origin check, with refusals recorded in the audit trail."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings

from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record


def _origin(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return str(value.decode("latin-1"))
    return None


class AuditedOriginValidator(OriginValidator):
    """Channels' OriginValidator (Origin must match ALLOWED_HOSTS; none is refused)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = _origin(scope)
        if not self.valid_origin(urlparse(origin) if origin is not None else None):
            await database_sync_to_async(audit_record)(
                action=AuditAction.WS_REFUSED,
                actor=None,
                target=(TargetType.SOCKET, scope.get("path", "")[:64]),
                outcome=AuditOutcome.DENIED,
                details={
                    "reason": "origin_not_allowed",
                    "origin": (origin or "")[:200],
                },
                context=audit_context.from_scope(scope),
            )
        return await super().__call__(scope, receive, send)


def allowed_hosts_origin_validator(application: Any) -> AuditedOriginValidator:
    return AuditedOriginValidator(application, settings.ALLOWED_HOSTS)
