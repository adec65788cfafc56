"""Changing a person's preferences: their custom instructions, screened by the guardrail
policy and audited (`preferences.changed`, with lengths, never the text)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record
from guardrails import dlp
from guardrails.models import DlpMode
from guardrails.services import GuardrailRefused, message_screen
from preferences.models import Preferences
from preferences.selectors import instructions_of


class PreferencesRefused(Exception):
    """The change is refused. `code` is for machines, `message` for the person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _validated(instructions: object) -> str:
    if not isinstance(instructions, str):
        raise PreferencesRefused("invalid", "The instructions must be text.")
    text = instructions.replace("\r\n", "\n").strip()
    if "\x00" in text:
        raise PreferencesRefused("invalid", "The instructions contain a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PreferencesRefused(
            "invalid", "The instructions are not valid Unicode text (a lone surrogate)."
        ) from None
    limit = settings.CHAT_CUSTOM_INSTRUCTIONS_MAX_CHARS
    if len(text) > limit:
        raise PreferencesRefused(
            "too_large",
            f"Instructions have at most {limit:,} characters; these have {len(text):,}. "
            "Shorten them and save again.",
        )
    return text


def _screen(*, actor: Any, text: str) -> dict[str, Any]:
    """Apply the guardrail policy to the instructions as to a message. Refuses what a message
    would have blocked, and personal data or secrets the policy would redact (the system
    prompt is not redacted, so the value would reach the provider). Returns what is recorded
    when the policy only flags. The refusal is audited here, in its own transaction."""
    try:
        screening = message_screen(actor=actor, text=text)
    except GuardrailRefused as exc:
        if exc.action == AuditAction.PII_BLOCKED:
            message = (
                f"Your instructions look like they contain {dlp.describe(exc.details['types'])}"
                ". Your organisation's data policy does not allow it: remove it and save again."
            )
        else:
            message = (
                "Your instructions look like an attempt to override the organisation's "
                "instructions, so they were not saved. Rephrase them and save again."
            )
        _refusal(actor=actor, action=exc.action, details=exc.details)
        raise PreferencesRefused("guardrail_blocked", message) from None
    if screening.pii and screening.dlp_mode == DlpMode.REDACT:
        details = {"source": "message", "mode": screening.dlp_mode, "types": screening.pii}
        _refusal(actor=actor, action=AuditAction.PII_BLOCKED, details=details)
        raise PreferencesRefused(
            "guardrail_blocked",
            f"Your instructions look like they contain {dlp.describe(screening.pii)}. Your "
            "organisation's data policy replaces it with a placeholder before it reaches a "
            "model, which instructions cannot have: remove it and save again.",
        )
    flagged: dict[str, Any] = {}
    if screening.pii:
        flagged["pii"] = screening.pii
    if screening.injection is not None:
        flagged["injection_score"] = screening.injection.score
    return flagged


def _refusal(*, actor: Any, action: str, details: dict[str, Any]) -> None:
    with transaction.atomic():
        audit_record(
            action=action,
            actor=actor,
            target=(TargetType.USER, actor.public_id),
            outcome=AuditOutcome.DENIED,
            details={**details, "source": "instructions"},
        )


def preferences_save(*, actor: Any, instructions: object) -> Preferences:
    """Save the actor's custom instructions ("" clears them). Audited as
    `preferences.changed` with the old and new lengths (never the text).

    Raises PreferencesRefused: invalid (not text, NUL, lone surrogate), too_large (over
    CHAT_CUSTOM_INSTRUCTIONS_MAX_CHARS), disabled (the administrator turned custom
    instructions off), guardrail_blocked (the guardrail policy would block or redact them;
    the refusal is audited as the guardrail's action, with source "instructions").
    """
    if not settings.CHAT_CUSTOM_INSTRUCTIONS_ENABLED:
        raise PreferencesRefused(
            "disabled", "Your organisation has turned custom instructions off."
        )
    text = _validated(instructions)
    flagged = _screen(actor=actor, text=text) if text else {}
    with transaction.atomic():
        previous = instructions_of(actor)
        preferences, _ = Preferences.objects.select_for_update().get_or_create(user=actor)
        if previous == text:
            return preferences
        preferences.instructions = text
        preferences.save(update_fields=["instructions", "updated_at"])
        audit_record(
            action=AuditAction.PREFERENCES_CHANGED,
            actor=actor,
            target=(TargetType.USER, actor.public_id),
            details={
                "field": "instructions",
                "characters": len(text),
                "previous_characters": len(previous),
                "cleared": not text,
                **flagged,
            },
        )
    return preferences
