"""Personal fields of audit events, sealed under a key per person (crypto-shredding).

An event's personal fields are encrypted (AES-256-GCM, `protection.aead`) under the key of
the person they belong to *before* the event is hashed, so the chain covers the ciphertext:

* the actor's e-mail and IP address (the address unless AUDIT_SEAL_IP is false), as one blob
  in `actor_email` (`SEALED_PREFIX` + base64; `ip` is left empty), under the actor's key;
* the details that name a person (`PERSONAL_DETAIL_KEYS`: a user name, an e-mail, an
  object's name), as one blob per person in `details["_sealed"]` (`{"<user pk>": base64}`),
  under the key of the person the event is about — a user target, or the owner of the target
  conversation or API key.

Each person's key (`audit.SubjectKey`) is a random data key wrapped by the product's master
key (`protection.keyring`). Erasing the person destroys the wrapped key: the ciphertext stays,
the chain still verifies, and nobody can read those fields again. Every reader — the
console, the export — goes through `reveal`, which shows `ERASED` for a destroyed key.
Anonymous events (no actor) keep their address in clear: the product links it to nobody.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

SEALED_KEY = "_sealed"
# An `actor_email` that starts with this holds the actor's sealed e-mail and address.
SEALED_PREFIX = "sealed:v1:"
ERASED = "[erased]"
UNAVAILABLE = "[unavailable]"
KEY_PURPOSE = "audit.subject"
# Detail keys that name a person; sealed under the subject's key when the event has one.
PERSONAL_DETAIL_KEYS = frozenset({"username", "email", "object", "name", "first_name", "last_name"})
# The actor's own columns, sealed under the actor's key.
ACTOR_FIELDS = ("actor_email", "ip")

# Unwrapped keys cached per user for sealing, so a busy writer does not read the key's row
# for every event; for ENCRYPTION_KEY_CACHE_SECONDS, like the keyring's. A key destroyed by
# another process is used for sealing at most that long (what it seals then is unreadable,
# which is what erasure wants anyway). Readers never use this cache.
_CACHE_SECONDS = 300.0
_cache: dict[int, tuple[float, bytes | None]] = {}
_cache_lock = threading.Lock()


class ErasedKeyError(Exception):
    """The person's key was destroyed by erasure."""


def subject_of(target: Any) -> int | None:
    """The pk of the person an event's target is about: a user, or the owner of the target
    (a conversation, an API key). None for anything else."""
    if target is None or isinstance(target, tuple):
        return None
    from django.contrib.auth import get_user_model

    if isinstance(target, get_user_model()):
        return int(target.pk) if target.pk is not None else None
    owner_id = getattr(target, "owner_id", None)
    return int(owner_id) if isinstance(owner_id, int) else None


# --- Keys -------------------------------------------------------------------------------------


def _aad(*, sequence: int, subject_id: int, part: str) -> bytes:
    # Binds a blob to its event, person and place: copied elsewhere, it fails to open.
    return f"audit-event-personal:v1|{sequence}|{subject_id}|{part}".encode()


def _cached(user_id: int) -> bytes | bool | None:
    with _cache_lock:
        hit = _cache.get(user_id)
    if hit is None or hit[0] < time.monotonic():
        return False
    return hit[1]


def _remember(user_id: int, key: bytes | None) -> None:
    seconds = float(getattr(settings, "ENCRYPTION_KEY_CACHE_SECONDS", _CACHE_SECONDS))
    with _cache_lock:
        _cache[user_id] = (time.monotonic() + seconds, key)


def forget(user_id: int | None = None) -> None:
    """Drop cached keys (one person's, or all)."""
    with _cache_lock:
        if user_id is None:
            _cache.clear()
        else:
            _cache.pop(user_id, None)


def _unwrap(row: Any) -> bytes | None:
    from protection import keyring

    if row.wrapped_key is None:
        return None
    wrapped = keyring.WrappedKey(master_key_id=row.master_key_id, blob=bytes(row.wrapped_key))
    return keyring.unwrap(wrapped, purpose=KEY_PURPOSE)


def _sealing_key(user_id: int) -> bytes | None:
    """The person's key, created on first use; None when erasure destroyed it."""
    from audit.models import SubjectKey
    from protection import keyring

    cached = _cached(user_id)
    if cached is not False:
        return cached  # type: ignore[return-value]
    row = SubjectKey.objects.filter(user_id=user_id).first()
    if row is None:
        key, wrapped = keyring.new_data_key(purpose=KEY_PURPOSE)
        try:
            with transaction.atomic():
                SubjectKey.objects.create(
                    user_id=user_id, master_key_id=wrapped.master_key_id, wrapped_key=wrapped.blob
                )
        except IntegrityError:  # created meanwhile by another writer: use theirs
            row = SubjectKey.objects.get(user_id=user_id)
        else:
            _remember_on_commit(user_id, key)
            return key
    key_or_none = _unwrap(row)
    _remember_on_commit(user_id, key_or_none)
    return key_or_none


def _remember_on_commit(user_id: int, key: bytes | None) -> None:
    # Cached only once committed: a key row created in a transaction that rolls back must
    # not seal later events (they would be unreadable). Outside a transaction: at once.
    transaction.on_commit(lambda: _remember(user_id, key))


def key_destroy(*, user_id: int) -> bool:
    """Destroy a person's key (erasure). Returns False when there was none to destroy.

    Called inside the erasing transaction; the cache is dropped on commit (and now, for this
    process's later reads in the same transaction).
    """
    from audit.models import SubjectKey

    forget(user_id)
    transaction.on_commit(lambda: forget(user_id))
    changed = SubjectKey.objects.filter(user_id=user_id, wrapped_key__isnull=False).update(
        wrapped_key=None, master_key_id="", destroyed_at=timezone.now()
    )
    if not SubjectKey.objects.filter(user_id=user_id).exists():
        # Never had a key: leave a destroyed one, so a later event cannot create a new key
        # and so the console can tell "erased" from "missing".
        SubjectKey.objects.create(
            user_id=user_id, master_key_id="", wrapped_key=None, destroyed_at=timezone.now()
        )
        return False
    return bool(changed)


# --- Sealing (before the hash) ----------------------------------------------------------------


def _seal(key: bytes, values: Mapping[str, Any], *, aad: bytes, subject_id: int) -> str:
    from protection import aead

    plaintext = json.dumps(dict(values), sort_keys=True, ensure_ascii=False).encode("utf-8")
    blob = aead.seal(key, plaintext, aad=aad, key_id=f"audit-subject-{subject_id}")
    return base64.b64encode(blob).decode("ascii")


def seal_fields(fields: dict[str, Any], *, actor_id: int | None, subject_id: int | None) -> None:
    """Seal an event's personal fields in place, before it is hashed.

    `fields` are the event's column values as `audit.services._build` prepares them (details
    already normalised to JSON types). The actor's e-mail and address become one blob in
    `actor_email` (`SEALED_PREFIX`…, `ip` left empty); the personal details keys become a
    blob per subject in `details["_sealed"]`. A person whose key was destroyed gets nothing
    sealed: their account holds placeholders by then, not personal data.
    """
    sequence = int(fields["sequence"])
    if actor_id is not None:
        names = ACTOR_FIELDS if settings.AUDIT_SEAL_IP else ("actor_email",)
        own = {name: fields[name] for name in names if fields.get(name)}
        key = _sealing_key(actor_id) if own else None
        if key is not None:
            aad = _aad(sequence=sequence, subject_id=actor_id, part="actor")
            fields["actor_email"] = SEALED_PREFIX + _seal(key, own, aad=aad, subject_id=actor_id)
            if "ip" in own:
                fields["ip"] = None
        elif own and "ip" in own:
            # Erased: an event recorded just before the erasure and chained after it (the
            # deferred write path) must not keep the address in clear.
            fields["ip"] = None
    details = fields.get("details")
    if subject_id is None or not isinstance(details, dict):
        return
    named = {name: details[name] for name in sorted(PERSONAL_DETAIL_KEYS) if name in details}
    key = _sealing_key(subject_id) if named else None
    if key is None:
        if named:
            # Erased: details recorded before the erasure and chained after it are dropped,
            # never stored in clear.
            remaining = {name: value for name, value in details.items() if name not in named}
            remaining["personal_data"] = ERASED
            fields["details"] = remaining
        return
    aad = _aad(sequence=sequence, subject_id=subject_id, part="details")
    remaining = {name: value for name, value in details.items() if name not in named}
    remaining[SEALED_KEY] = {str(subject_id): _seal(key, named, aad=aad, subject_id=subject_id)}
    fields["details"] = remaining


# --- Revealing (every reader) -----------------------------------------------------------------


@dataclass
class Revealed:
    """What an event shows a reader: its personal fields opened, or marked erased."""

    actor_email: str
    ip: str | None
    details: dict[str, Any]
    # Persons whose sealed fields could not be read, by pk: "erased" (key destroyed) or
    # "unavailable" (no key, or the blob does not open: master key missing, blob altered).
    withheld: dict[int, str] = field(default_factory=dict)

    @property
    def erased(self) -> bool:
        return "erased" in self.withheld.values()


def _keys_for(subject_ids: Iterable[int]) -> dict[int, Any]:
    from audit.models import SubjectKey

    ids = set(subject_ids)
    if not ids:
        return {}
    rows = {row.user_id: row for row in SubjectKey.objects.filter(user_id__in=ids)}
    return {person: rows.get(person) for person in ids}  # None: no key (unavailable)


def subjects_of(*, actor_id: int | None, actor_email: str, details: Any) -> set[int]:
    """Whose keys an event's sealed fields need."""
    people: set[int] = set()
    if actor_id is not None and actor_email.startswith(SEALED_PREFIX):
        people.add(actor_id)
    sealed = details.get(SEALED_KEY) if isinstance(details, dict) else None
    if isinstance(sealed, dict):
        people.update(int(person) for person in sealed if str(person).isdigit())
    return people


def _open(row: Any, text: str, *, aad: bytes) -> dict[str, Any] | str:
    """The sealed values, or "erased" / "unavailable". Never raises."""
    from protection import aead

    if row is None:
        return "unavailable"
    if row.wrapped_key is None:
        return "erased"
    try:
        key = _unwrap(row)
        if key is None:
            return "erased"
        values = json.loads(aead.open(key, base64.b64decode(text), aad=aad))
    except Exception:
        return "unavailable"
    return values if isinstance(values, dict) else "unavailable"


def _marker(state: str) -> str:
    return ERASED if state == "erased" else UNAVAILABLE


def reveal_values(
    *,
    sequence: int,
    actor_id: int | None,
    actor_email: str,
    ip: str | None,
    details: Any,
    keys: Mapping[int, Any] | None = None,
) -> Revealed:
    """Open one event's sealed fields. `keys` (SubjectKey rows, or None for none, by user pk)
    saves the reads when revealing many events; any not given are read here."""
    shown = dict(details) if isinstance(details, dict) else {}
    sealed = shown.pop(SEALED_KEY, None)
    result = Revealed(actor_email=actor_email, ip=ip, details=shown)
    needed = subjects_of(actor_id=actor_id, actor_email=actor_email, details=details)
    rows = dict(keys or {})
    rows.update(_keys_for(person for person in needed if person not in rows))
    if actor_id is not None and actor_email.startswith(SEALED_PREFIX):
        aad = _aad(sequence=sequence, subject_id=actor_id, part="actor")
        opened = _open(rows.get(actor_id), actor_email.removeprefix(SEALED_PREFIX), aad=aad)
        if isinstance(opened, str):
            result.withheld[actor_id] = opened
            result.actor_email = _marker(opened)
        else:
            result.actor_email = str(opened.get("actor_email", ""))
            result.ip = opened.get("ip", result.ip)
    if isinstance(sealed, dict):
        for person_text, text in sealed.items():
            if not str(person_text).isdigit():
                continue
            person = int(person_text)
            aad = _aad(sequence=sequence, subject_id=person, part="details")
            opened = _open(rows.get(person), str(text), aad=aad)
            if isinstance(opened, str):
                result.withheld[person] = opened
                shown["personal_data"] = _marker(opened)
            else:
                shown.update(opened)
    return result


def reveal(event: Any, *, keys: Mapping[int, Any] | None = None) -> Revealed:
    """`reveal_values` for an AuditEvent. Uses the actor's key row when it was loaded with
    the event (`select_related("actor__subject_key")`), so a list page reads no more."""
    cached = getattr(event, "_revealed", None)
    if cached is not None:
        return cached
    rows = dict(keys or {})
    actor = event._state.fields_cache.get("actor")
    if actor is not None and event.actor_id not in rows:
        row = actor._state.fields_cache.get("subject_key", False)
        if row is not False:
            rows[event.actor_id] = row
    revealed = reveal_values(
        sequence=event.sequence,
        actor_id=event.actor_id,
        actor_email=event.actor_email,
        ip=event.ip,
        details=event.details,
        keys=rows,
    )
    event._revealed = revealed
    return revealed


def reveal_rows(rows: list[dict[str, Any]]) -> list[Revealed]:
    """Reveal many exported rows (dicts of column values) with one read of their keys."""
    keys = _keys_for(
        person
        for row in rows
        for person in subjects_of(
            actor_id=row["actor_id"], actor_email=row["actor_email"], details=row["details"]
        )
    )
    return [
        reveal_values(
            sequence=row["sequence"],
            actor_id=row["actor_id"],
            actor_email=row["actor_email"],
            ip=row["ip"],
            details=row["details"],
            keys=keys,
        )
        for row in rows
    ]


# --- Master key rotation ----------------------------------------------------------------------


@dataclass
class RewrapReport:
    rewrapped: int = 0
    failed: list[int] = field(default_factory=list)  # user pks whose key could not be re-wrapped


def subject_keys_rewrap(*, batch_size: int = 200) -> RewrapReport:
    """Re-wrap every live person's key not yet under the current master key (after a master
    key rotation, before the old master key is retired), in batches, each committed.

    Destroyed keys have nothing to re-wrap. Raises protection.aead.KeyUnavailableError when no
    master key is configured; a key that cannot be re-wrapped (its master key gone, or
    altered) is reported in `failed` and left as it is.
    """
    from audit.models import SubjectKey
    from protection import aead, keyring

    current = keyring.current_master_key_id()
    report = RewrapReport()
    last = 0
    while True:
        with transaction.atomic():
            rows = list(
                SubjectKey.objects.select_for_update()
                .filter(pk__gt=last, wrapped_key__isnull=False)
                .exclude(master_key_id=current)
                .order_by("pk")[:batch_size]
            )
            if not rows:
                return report
            for row in rows:
                old = keyring.WrappedKey(
                    master_key_id=row.master_key_id, blob=bytes(row.wrapped_key or b"")
                )
                try:
                    new = keyring.rewrap(old, purpose=KEY_PURPOSE)
                except aead.ProtectionError:
                    report.failed.append(row.user_id)
                    continue
                row.master_key_id, row.wrapped_key = new.master_key_id, new.blob
                row.save(update_fields=["master_key_id", "wrapped_key"])
                report.rewrapped += 1
            last = rows[-1].pk
