"""Erasure of a person on a privacy request: their personal data goes, the records stay sound.

`person_erase` does it all in one transaction and records one `person.erased` event:

* every conversation of theirs loses its content (title, message text, tool calls and
  results, notices, errors, options, provider state) and leaves their lists;
* the account is deactivated and becomes a placeholder: user name `erased-<id>`, no e-mail,
  no names, no usable password; their sessions are deleted and their sockets closed;
* their API keys are revoked and their names wiped; their budgets' names become
  placeholders; django-axes' sign-in records for their user name and e-mail are deleted;
  the console's admin log stops naming them, their keys or their conversations;
* their audit key is destroyed (audit/personal.py): the personal fields of their audit
  events stay in the chain as ciphertext nobody can read, so the chain still verifies.

What stays, and why, is in docs/data-protection.md ("Erasure"). Refused while a legal hold
applies: on the person, or on any of their conversations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.hashers import make_password
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accounts import sessions
from accounts.models import ApiKey, User, UserSession
from audit import personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.governed import governed_writes
from audit.services import audit_record

REASON_MAX = 500
PLACEHOLDER = "erased-{pk}"


class ErasureRefused(Exception):
    """Erasure cannot be done now. `code` is a stable machine code; the message is for people
    and names no personal data."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ErasureResult:
    """What `person_erase` did. `already` is True when the person had been erased before
    (nothing was done or recorded this time); `erased_at` is when it happened."""

    person_id: int
    already: bool
    erased_at: Any
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> str:
        placeholder = PLACEHOLDER.format(pk=self.person_id)
        if self.already:
            return f"{placeholder} was already erased on {self.erased_at:%Y-%m-%d %H:%M} UTC."
        done = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in self.counts.items())
        return f"Erased: the person is now {placeholder} ({done})."


def _names_of(person: User) -> list[str]:
    return [
        value.strip().lower()
        for value in (person.get_username(), person.email, person.first_name, person.last_name)
        if value and len(value.strip()) >= 3
    ]


def _names_person(text: str, names: list[str]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", lowered) for name in names)


def _refuse(*, actor: Any, person: User, code: str, message: str) -> ErasureRefused:
    # Recorded in a transaction of its own: the caller's is about to roll back.
    audit_record(
        action=AuditAction.PERSON_ERASE_REFUSED,
        actor=actor,
        target=person,
        outcome=AuditOutcome.DENIED,
        details={"code": code},
    )
    return ErasureRefused(code, message)


def _erase_content(person: User, now: Any) -> dict[str, int]:
    from conversations.models import Conversation, Message
    from conversations.search import forget_person

    conversations = Conversation.objects.filter(owner_id=person.pk)
    messages = Message.objects.filter(conversation__owner_id=person.pk).update(
        content="", tool_events=[], notice="", error="", options={}
    )
    count = conversations.count()
    conversations.update(title="", provider_state={})
    conversations.filter(deleted_at__isnull=True).update(deleted_at=now)
    forget_person(person.pk)  # the blind search index of their words (conversations.search)
    return {"conversations": count, "messages": messages}


def _erase_traces(
    person: User, *, sign_in_names: list[str], now: Any, actor: Any
) -> dict[str, int]:
    """Everything outside the account row and the transcripts that names the person."""
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType
    from django.db.models import Q

    from conversations.models import Conversation
    from costs.models import Budget

    placeholder = PLACEHOLDER.format(pk=person.pk)
    counts: dict[str, int] = {}

    counts["sessions"], _ = UserSession.objects.filter(user_id=person.pk).delete()
    # Their custom instructions are personal text (preferences app).
    from preferences.models import Preferences

    counts["preferences"], _ = Preferences.objects.filter(user_id=person.pk).delete()
    sessions.sockets_close(user=person, reason=sessions.DEACTIVATED)

    keys = ApiKey.objects.filter(owner_id=person.pk)
    key_ids = list(keys.values_list("pk", flat=True))
    counts["api_keys_revoked"] = keys.filter(revoked_at__isnull=True).update(
        revoked_at=now, revoked_by=actor
    )
    keys.update(name=placeholder, last_used_ip=None)

    budgets = 0
    for budget in Budget.objects.filter(Q(user_id=person.pk) | Q(api_key_id__in=key_ids)):
        budget.name = placeholder
        budget.save(update_fields=["name"])
        budgets += 1
    counts["budgets_renamed"] = budgets

    by_name = Q()
    for name in sign_in_names:
        by_name |= Q(username__iexact=name)
    removed = 0
    if sign_in_names:
        for model in (AccessAttempt, AccessLog, AccessFailureLog):
            removed += model.objects.filter(by_name).delete()[0]
    counts["sign_in_records"] = removed

    # The admin log names objects by their str(): the person, their keys, their
    # conversations' titles.
    named = Q()
    for model, ids in (
        (User, [person.pk]),
        (ApiKey, key_ids),
        (
            Conversation,
            list(Conversation.objects.filter(owner_id=person.pk).values_list("pk", flat=True)),
        ),
    ):
        if ids:
            content_type = ContentType.objects.get_for_model(model)
            named |= Q(content_type=content_type, object_id__in=[str(pk) for pk in ids])
    counts["admin_log_entries"] = (
        LogEntry.objects.filter(named).update(object_repr=placeholder, change_message="")
        if named
        else 0
    )
    return counts


def person_erase(*, actor: Any, person: User, reason: str) -> ErasureResult:
    """Erase `person`'s personal data (see the module docstring); audited as `person.erased`
    with the counts and the reason, which must not name the person.

    `actor` is the person doing it (None: an operator's command). Calling it again for an
    erased person does nothing and says so (`ErasureResult.already`).

    Raises PermissionDenied unless the actor has `accounts.erase_person`; ErasureRefused with
    code `legal_hold_person`, `legal_hold_conversation` (recorded as `person.erase_refused`),
    `reply_in_flight` (a reply is being written: try again when it ends), `self_erasure`,
    `reason_required` or `reason_names_person`.
    """
    if actor is not None and not actor.has_perm("accounts.erase_person"):
        raise PermissionDenied
    reason = (reason or "").strip()[:REASON_MAX]
    if not reason:
        raise ErasureRefused(
            "reason_required", "Give a reason: the privacy request's case or ticket reference."
        )
    if actor is not None and actor.pk == person.pk:
        raise ErasureRefused("self_erasure", "You cannot erase yourself; ask a colleague.")
    from conversations.models import Conversation, Message

    refusal: tuple[str, str] | None = None
    with transaction.atomic():
        person = User.objects.select_for_update().get(pk=person.pk)
        if person.erased_at is not None:
            return ErasureResult(person_id=person.pk, already=True, erased_at=person.erased_at)
        sign_in_names = [name for name in (person.get_username(), person.email) if name]
        if _names_person(reason, _names_of(person)):
            raise ErasureRefused(
                "reason_names_person",
                "The reason would stay in the audit trail: give a case reference, not the "
                "person's name, user name or e-mail.",
            )
        held_conversations = Conversation.objects.filter(owner_id=person.pk, legal_hold=True)
        if person.legal_hold:
            refusal = (
                "legal_hold_person",
                "This person is under legal hold: their data must be kept until the hold is "
                "released, so they cannot be erased now.",
            )
        elif held_conversations.exists():
            refusal = (
                "legal_hold_conversation",
                f"{held_conversations.count()} of this person's conversations are under legal "
                "hold: they must be kept until the holds are released, so the person cannot "
                "be erased now.",
            )
        elif Message.objects.filter(
            conversation__owner_id=person.pk, status__in=Message.IN_FLIGHT
        ).exists():
            raise ErasureRefused(
                "reply_in_flight",
                "A reply is being written in one of this person's conversations; try again "
                "in a minute.",
            )
        if refusal is None:
            now = timezone.now()
            # One person.erased event records what these bulk writes did.
            with governed_writes(reason="erasure: recorded as person.erased with its counts"):
                counts = _erase_content(person, now)
                counts.update(
                    _erase_traces(person, sign_in_names=sign_in_names, now=now, actor=actor)
                )
            placeholder = PLACEHOLDER.format(pk=person.pk)
            person.username = placeholder
            person.email = ""
            person.first_name = person.last_name = ""
            # Not set_unusable_password(): that is a password change (an event of its own).
            person.password = make_password(None)
            person.is_active = False
            person.erased_at = now
            # Sessions are deleted above; no second "sessions ended" event.
            person._was_active = False  # type: ignore[attr-defined]
            person.save(
                update_fields=[
                    "username", "email", "first_name", "last_name", "password", "is_active",
                    "erased_at",
                ]
            )  # fmt: skip
            counts["audit_key_destroyed"] = int(personal.key_destroy(user_id=person.pk))
            audit_record(
                action=AuditAction.PERSON_ERASED,
                actor=actor,
                target=person,
                details={"reason": reason, **counts, **({"via": "command"} if not actor else {})},
            )
            return ErasureResult(person_id=person.pk, already=False, erased_at=now, counts=counts)
    code, message = refusal
    raise _refuse(actor=actor, person=person, code=code, message=message)
