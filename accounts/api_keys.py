"""API keys: creating, revoking and checking them (the API's admission will call
`api_key_authenticate`).

A key is `eai_<prefix8>_<secret>`. The prefix (`eai_<prefix8>`) is stored in clear and names
the key in lists, logs and the audit trail; the secret never leaves this module except once,
as the return value of `api_key_create`.

Hashing: the secret is 40 random URL-safe characters (240 bits), not a password people
choose, so a slow password hash (argon2) would add latency to every API call and no
protection: nobody can guess such a key by brute force, however fast the hash. The stored
value is an HMAC-SHA256 of the whole key with a pepper derived from SECRET_KEY
(`salted_hmac`), so a copy of the database alone cannot even confirm a key found elsewhere.
Comparison is in constant time. Rotating SECRET_KEY keeps keys working while the old value is
in SECRET_KEY_FALLBACKS: a key that matches under a fallback is re-hashed under the new
SECRET_KEY on its next use (docs/security.md). Without the fallback, every key not yet used
since the rotation stops working.
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.models import ApiKey, User
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record
from costs.models import Budget
from enterprise_ai import ratelimit

KEY_PREFIX = "eai_"
PREFIX_CHARS = 8
SECRET_BYTES = 30  # token_urlsafe(30) is 40 characters
HMAC_SALT = "accounts.api_keys.ApiKey"
# Writing last_used_at/ip on every call would be a write per request; once a minute is enough
# to tell "in use" from "stale".
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCOPES = tuple(ApiKey.Scope.values)

_ALPHABET = string.ascii_lowercase + string.digits
_KEY_RE = re.compile(r"^eai_([a-z0-9]{8})_([A-Za-z0-9_-]{20,100})$")


class ApiKeyRefused(Exception):
    """A key was not accepted. `code` is one of: invalid_key, revoked_key, expired_key,
    inactive_owner, scope_missing, rate_limited (with `retry_after` seconds); `message` is
    safe to show to the caller."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _hash(raw: str, secret: str | None = None) -> str:
    return salted_hmac(HMAC_SALT, raw, secret=secret, algorithm="sha256").hexdigest()


def _matches(key: ApiKey, raw: str) -> bool:
    """Whether `raw` is `key`'s secret. A key hashed under a previous SECRET_KEY (listed in
    SECRET_KEY_FALLBACKS while it is rotated) matches too and is re-hashed under the current
    one, so that dropping the fallback later does not invalidate it."""
    if constant_time_compare(key.secret_hash, _hash(raw)):
        return True
    for fallback in settings.SECRET_KEY_FALLBACKS:
        if constant_time_compare(key.secret_hash, _hash(raw, fallback)):
            key.secret_hash = _hash(raw)
            ApiKey.objects.filter(pk=key.pk).update(secret_hash=key.secret_hash)
            return True
    return False


def _target(key: ApiKey) -> ApiKey:
    # The key itself (target type api_key, its public id): its owner is the event's subject,
    # whose audit key seals the key's name (audit/personal.py).
    return key


def _facts(key: ApiKey) -> dict[str, Any]:
    return {"prefix": key.prefix, "name": key.name, "owner": str(key.owner.public_id)}


def scopes_validate(scopes: Any) -> list[str]:
    """The scopes as a sorted list without duplicates. Raises ValidationError when empty or
    when one is unknown."""
    values = sorted({str(scope).strip() for scope in scopes or () if str(scope).strip()})
    unknown = [scope for scope in values if scope not in SCOPES]
    if unknown:
        raise ValidationError(
            f"Unknown scope: {', '.join(unknown)}. Choose from {', '.join(SCOPES)}."
        )
    if not values:
        raise ValidationError("Choose at least one scope.")
    return values


def api_key_can_manage(*, key: ApiKey, actor: Any) -> bool:
    """Whether `actor` may revoke `key`: its owner, or someone who may change API keys
    (the Administrator role)."""
    if actor is None or not actor.is_active:
        return False
    return bool(key.owner_id == actor.pk or actor.has_perm("accounts.change_apikey"))


@transaction.atomic
def api_key_create(
    *,
    owner: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    actor: Any,
    rate_limit_per_minute: int | None = None,
    budget_limit: Decimal | None = None,
    budget_period: str = Budget.Period.MONTHLY,
    via: str = "",
) -> tuple[ApiKey, str]:
    """Create a key for `owner` and return it with its plaintext, which is not kept.

    `actor` is the person creating it (None for the command line: a system event). Only the
    owner or someone who may add API keys (the Administrator role) may create one. Raises
    PermissionDenied otherwise, ValidationError for an empty name, unknown or no scopes, an
    expiry in the past or an inactive owner.

    `budget_limit` (per `budget_period`) gives the key a budget of its own (a costs.Budget
    with scope "api_key", blocking), on top of the owner's budgets; it is then managed with
    the other budgets in the console.
    """
    if actor is not None and actor.pk != owner.pk and not actor.has_perm("accounts.add_apikey"):
        raise PermissionDenied
    name = name.strip()
    if not name:
        raise ValidationError("Give the key a name.")
    scopes = scopes_validate(scopes)
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ValidationError("The expiry must be in the future.")
    if not owner.is_active:
        raise ValidationError("The owner's account is deactivated.")
    if budget_limit is not None and (
        not isinstance(budget_limit, Decimal | int) or budget_limit < 0
    ):
        raise ValidationError("A key's budget must be an amount of at least 0.")
    if budget_period not in Budget.Period.values:
        raise ValidationError(
            f"Unknown budget period. Choose from {', '.join(Budget.Period.values)}."
        )
    while True:
        prefix = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_CHARS))
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    raw = f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    key = ApiKey(
        owner=owner,
        name=name[:100],
        prefix=prefix,
        secret_hash=_hash(raw),
        scopes=scopes,
        created_by=actor,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    key.full_clean()
    key.save()
    details: dict[str, Any] = {
        **_facts(key),
        "scopes": scopes,
        "expires_at": expires_at.isoformat() if expires_at else None,
    }
    if rate_limit_per_minute is not None:
        details["rate_limit_per_minute"] = rate_limit_per_minute
    if budget_limit is not None:
        budget = Budget.objects.create(
            name=f"API key {key.prefix}",
            scope=Budget.Scope.API_KEY,
            api_key=key,
            period=budget_period,
            limit_amount=Decimal(budget_limit),
            action=Budget.Action.BLOCK,
        )
        details["budget"] = {
            "id": budget.pk,
            "limit": str(budget.limit_amount),
            "period": budget.period,
        }
    if via:
        details["via"] = via
    audit_record(
        action=AuditAction.API_KEY_CREATED, actor=actor, target=_target(key), details=details
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Any) -> ApiKey:
    """Revoke `key` at once (the next call with it is refused); audited. Revoking a revoked
    key changes nothing and records nothing. Raises PermissionDenied unless the actor is the
    key's owner or may change API keys (the Administrator role)."""
    if not api_key_can_manage(key=key, actor=actor):
        raise PermissionDenied
    key = ApiKey.objects.select_for_update().select_related("owner").get(pk=key.pk)
    if key.revoked_at is not None:
        return key
    key.revoked_at = timezone.now()
    key.revoked_by = actor
    key.save(update_fields=["revoked_at", "revoked_by"])
    audit_record(
        action=AuditAction.API_KEY_REVOKED, actor=actor, target=_target(key), details=_facts(key)
    )
    return key


def _refuse(
    code: str,
    message: str,
    *,
    key: ApiKey | None,
    prefix: str,
    details: dict[str, Any],
    retry_after: int | None = None,
) -> ApiKeyRefused:
    # A refusal is recorded in its own transaction (the caller's, if any, is about to fail);
    # as a denial it is sampled per owner, or per address for unknown keys.
    audit_record(
        action=AuditAction.API_KEY_REFUSED,
        outcome=AuditOutcome.DENIED,
        actor=key.owner if key is not None else None,
        target=_target(key) if key is not None else None,
        details={"code": code, "prefix": prefix, **details},
    )
    return ApiKeyRefused(code, message, retry_after=retry_after)


def _record_expiry(key: ApiKey, now: datetime) -> None:
    """Record `api_key.expired` once per key: the first time it is presented after expiring."""
    with transaction.atomic():
        first = ApiKey.objects.filter(pk=key.pk, expiry_recorded_at__isnull=True).update(
            expiry_recorded_at=now
        )
        if first:
            audit_record(
                action=AuditAction.API_KEY_EXPIRED,
                actor=None,
                target=_target(key),
                details={**_facts(key), "expired_at": key.expires_at.isoformat()}
                if key.expires_at
                else _facts(key),
            )


def _check_key_rate(key: ApiKey) -> None:
    """Count one request against the key's limit per minute (its own, or
    API_KEY_REQUESTS_PER_MINUTE). Raises ApiKeyRefused("rate_limited") with the seconds
    until the window ends; the first refusal of a window is audited, the rest are not."""
    limit = key.rate_limit_per_minute or settings.API_KEY_REQUESTS_PER_MINUTE
    if not limit:
        return
    decision = ratelimit.hit(f"api:key:{key.public_id}", limit=limit, window_seconds=60)
    if decision.allowed:
        return
    message = (
        f"This API key has made {limit} requests this minute, the most allowed. Try again "
        f"in {decision.retry_after} second{'s' if decision.retry_after != 1 else ''}."
    )
    if decision.first_refusal:
        raise _refuse(
            "rate_limited",
            message,
            key=key,
            prefix=key.prefix,
            details={"limit": limit, "window_seconds": 60, "retry_after": decision.retry_after},
            retry_after=decision.retry_after,
        )
    raise ApiKeyRefused("rate_limited", message, retry_after=decision.retry_after)


def api_key_authenticate(*, raw: str, ip: str | None, scope: str) -> ApiKey:
    """The key `raw` stands for, if it may be used now for `scope`; its owner is `key.owner`.

    Raises ApiKeyRefused with code `invalid_key` (malformed, unknown prefix or wrong secret),
    `revoked_key`, `expired_key`, `inactive_owner`, `scope_missing` or `rate_limited` (every
    accepted request counts against the key's limit per minute). Each refusal is audited
    (`api_key.refused`, sampled like every denial; a rate limit once per window) with the
    key's prefix only, never the secret. On success, `last_used_at` and `last_used_ip` are
    written at most once a minute.
    """
    raw = (raw or "").strip()
    match = _KEY_RE.match(raw)
    if match is None:
        # Record only what looks like a prefix, never anything that could be a secret.
        shown = raw[:12] if raw.startswith(KEY_PREFIX) else ""
        shown = shown if re.fullmatch(r"eai_[a-z0-9]{0,8}", shown) else ""
        raise _refuse(
            "invalid_key", "Invalid API key.", key=None, prefix=shown, details={"malformed": True}
        )
    prefix = f"{KEY_PREFIX}{match.group(1)}"
    key = ApiKey.objects.select_related("owner").filter(prefix=prefix).first()
    if key is None or not _matches(key, raw):
        raise _refuse("invalid_key", "Invalid API key.", key=None, prefix=prefix, details={})
    now = timezone.now()
    if key.revoked_at is not None:
        raise _refuse(
            "revoked_key", "This API key has been revoked.", key=key, prefix=prefix, details={}
        )
    if key.is_expired(now):
        _record_expiry(key, now)
        raise _refuse(
            "expired_key", "This API key has expired.", key=key, prefix=prefix, details={}
        )
    if not key.owner.is_active:
        raise _refuse(
            "inactive_owner",
            "The owner of this API key is deactivated.",
            key=key,
            prefix=prefix,
            details={},
        )
    if scope not in (key.scopes or []):
        raise _refuse(
            "scope_missing",
            f"This API key does not have the {scope!r} scope.",
            key=key,
            prefix=prefix,
            details={"scope": scope[:64]},
        )
    _check_key_rate(key)
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        key.last_used_ip = ip
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now, last_used_ip=ip)
    return key
