"""The keyed audit chain (format 2) and incremental verification (issue 15, item 4).

Each attack is made the way someone who can write the database but does not hold the key
would make it (audit.testing), and must be caught at the event it touches, with the kind
named — not only at the next checkpoint: none of these tests signs a checkpoint unless it
says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit import chain
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.services import audit_chain_verify, audit_record, checkpoint_create
from audit.testing import (
    delete_and_relink,
    forge_from,
    insert_unkeyed,
    raw_sql,
    seed_events,
)
from audit.verify import verify_chain

pytestmark = pytest.mark.django_db

ROTATED_KEY = "a-brand-new-audit-key-after-rotation-0123456789"


def fields_of(sequence: int) -> dict[str, Any]:
    return AuditEvent.objects.values(*chain.HASHED_FIELDS).get(sequence=sequence)


def kind_at(report: Any) -> tuple[str, int]:
    assert report.problem is not None, report.summary()
    return report.problem.kind, report.problem.sequence


# --- The hash -----------------------------------------------------------------------------------


def test_a_new_event_is_hashed_with_the_chain_key_and_names_it(owner, settings) -> None:
    event = audit_record(action=AuditAction.LOGIN, actor=owner, details={"n": 1})
    master = settings.AUDIT_HMAC_KEY.encode()
    assert event.key_id == chain.key_id(master)
    fields = fields_of(event.sequence)
    data = chain.canonical(fields)
    assert b'"kid":"' + event.key_id.encode() + b'"' in data and data.endswith(b'"v":2}')
    chain_key = hmac.new(master, chain.CHAIN_KEY_LABEL, hashlib.sha256).digest()
    assert event.hash == hmac.new(chain_key, data, hashlib.sha256).hexdigest()
    # Neither plain SHA-256 nor the signing key itself gives the stored hash.
    assert event.hash != hashlib.sha256(data).hexdigest()
    assert event.hash != hmac.new(master, data, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("kid", ["", "0123456789abcdef"])
def test_the_fast_canonical_form_is_byte_identical_to_the_reference(kid) -> None:
    awkward = [
        {},
        {"text": 'quote " backslash \\ newline \n tab \t nul \x00 é 中文 😀 \u2028'},
        {"b": [1, 2.5, None, True, {"z": 1, "a": "x"}], "a": -3, "big": 10**20},
        {"1": "numeric key", "": "empty key", "é": "unicode key"},
    ]
    for n, details in enumerate(awkward):
        for actor_id, ip in [(None, None), (42, "10.0.0.7"), ("7", "2001:db8::1")]:
            occurred = datetime(2026, 1, 2, 3, 4, 5, n * 7, tzinfo=UTC)
            fields = {
                "sequence": 1000 + n,
                "occurred_at": occurred,
                "actor_id": actor_id,
                "actor_email": 'a"b@example.com',
                "ip": ip,
                "user_agent": "Mozilla/5.0 (\\x) ü",
                "session_hash": "s" * 64,
                "request_id": "req-\u00e9",
                "action": "message.sent",
                "target_type": "conversation",
                "target_id": "c-1",
                "outcome": "success",
                "details": details,
                "prev_hash": "f" * 64,
                "key_id": kid,
            }
            row = (*[fields[name] for name in chain.HASHED_FIELDS[:-1]], "h", kid)
            fast = chain.RowHasher.canonical_row(row, chain.fast_timestamp(occurred), details)
            assert fast == chain.canonical(fields)
    offset = datetime(2026, 1, 2, 5, 4, 5, 1, tzinfo=UTC).astimezone(
        timezone.get_fixed_timezone(120)
    )
    assert chain.fast_timestamp(offset) == chain.timestamp(offset) == "2026-01-02T05:04:05.000001Z"


# --- Tampering without the key: caught at the event ------------------------------------------


def test_an_altered_event_rehashed_with_plain_sha256_is_caught_at_that_event(owner) -> None:
    seed_events(20, owner)
    forge_from(7, {"n": "forged"}, key="plain")
    report = verify_chain()
    assert kind_at(report) == ("hash_mismatch", 7)
    assert report.events_checked == 6


def test_an_altered_event_rewritten_as_unkeyed_is_caught_as_a_downgrade(owner) -> None:
    seed_events(20, owner)
    forge_from(7, {"n": "forged"}, key="unkeyed")
    assert kind_at(verify_chain()) == ("downgrade", 7)


def test_an_inserted_event_is_caught_at_that_event(owner) -> None:
    seed_events(10, owner)
    inserted = insert_unkeyed(4, action=AuditAction.LOGOUT, details={"inserted": True})
    assert AuditEvent.objects.count() == 11
    assert kind_at(verify_chain()) == ("downgrade", inserted)


def test_an_event_appended_with_a_plain_hash_is_caught(owner) -> None:
    seed_events(5, owner)
    insert_unkeyed(5, action=AuditAction.LOGIN)
    assert kind_at(verify_chain()) == ("downgrade", 6)


def test_an_event_appended_with_a_key_id_but_no_key_is_caught(owner) -> None:
    seed_events(5, owner)
    fields = {**fields_of(5), "sequence": 6, "prev_hash": AuditEvent.objects.get(sequence=5).hash}
    fields["details"] = {"appended": True}
    guessed = hashlib.sha256(chain.canonical(fields)).hexdigest()
    raw_sql(
        "INSERT INTO audit_auditevent (sequence, occurred_at, actor_id, actor_email, ip, "
        "user_agent, session_hash, request_id, action, target_type, target_id, outcome, "
        "details, prev_hash, hash, key_id) SELECT 6, occurred_at, actor_id, actor_email, ip, "
        "user_agent, session_hash, request_id, action, target_type, target_id, outcome, "
        "%s, %s, %s, key_id FROM audit_auditevent WHERE sequence = 5",
        [json.dumps(fields["details"]), fields["prev_hash"], guessed],
    )
    assert kind_at(verify_chain()) == ("hash_mismatch", 6)


def test_a_deleted_event_with_later_ones_renumbered_and_rehashed_is_caught(owner) -> None:
    seed_events(12, owner)
    delete_and_relink(6)
    assert AuditEvent.objects.count() == 11
    assert kind_at(verify_chain()) == ("hash_mismatch", 6)


def test_an_event_naming_an_unknown_key_is_caught(owner) -> None:
    seed_events(6, owner)
    raw_sql("UPDATE audit_auditevent SET key_id = %s WHERE sequence = 4", ["feedfacefeedface"])
    report = verify_chain()
    assert kind_at(report) == ("unknown_key", 4)
    assert "feedfacefeedface" in report.problem.message  # type: ignore[union-attr]


def test_a_whole_chain_stripped_of_its_keys_is_caught_by_its_checkpoint(owner) -> None:
    seed_events(8, owner)
    checkpoint_create()
    forge_from(1, fields_of(1)["details"], key="unkeyed")  # every event now format 1
    assert kind_at(verify_chain()) == ("checkpoint_mismatch", 8)


def test_someone_holding_the_key_is_still_caught_by_the_checkpoint(owner) -> None:
    seed_events(8, owner)
    checkpoint_create()
    forge_from(3, {"n": "forged"}, key="held")
    assert kind_at(verify_chain()) == ("checkpoint_mismatch", 8)


# --- Format 1 (events written before the keyed chain) -----------------------------------------


def test_unkeyed_events_before_the_first_keyed_one_still_verify(owner) -> None:
    seed_events(5, owner)
    forge_from(1, fields_of(1)["details"], key="unkeyed")  # as written before the upgrade
    assert set(AuditEvent.objects.values_list("key_id", flat=True)) == {""}
    assert verify_chain().ok
    seed_events(5, owner)  # the upgrade: new events are keyed and link to the old ones
    assert AuditEvent.objects.get(sequence=6).key_id
    report = verify_chain()
    assert report.ok, report.summary()
    # Rewriting the unkeyed part is caught where it meets the first keyed event, whose
    # keyed hash covers the link to it.
    forge_from(2, {"n": "forged"}, key="unkeyed", through=5)
    assert kind_at(verify_chain()) == ("broken_link", 6)
    raw_sql(
        "UPDATE audit_auditevent SET prev_hash = %s WHERE sequence = 6",
        [AuditEvent.objects.get(sequence=5).hash],
    )
    assert kind_at(verify_chain()) == ("hash_mismatch", 6)


def test_stripping_the_keys_from_every_keyed_event_is_caught_by_a_checkpoint(owner) -> None:
    seed_events(5, owner)
    forge_from(1, fields_of(1)["details"], key="unkeyed")  # as written before the upgrade
    seed_events(5, owner)
    checkpoint_create()
    # Rewritten from the unkeyed part to the end as format 1, there is no keyed event left
    # to show the downgrade: the signed checkpoint does.
    forge_from(2, {"n": "forged"}, key="unkeyed")
    assert kind_at(verify_chain()) == ("checkpoint_mismatch", 10)


# --- Key rotation ---------------------------------------------------------------------------------


def test_events_hashed_with_a_previous_key_verify_after_rotation(owner, settings) -> None:
    seed_events(4, owner)
    old_key = settings.AUDIT_HMAC_KEY
    settings.AUDIT_HMAC_KEY = ROTATED_KEY
    settings.AUDIT_HMAC_PREVIOUS_KEYS = [old_key]
    seed_events(4, owner)
    kids = list(AuditEvent.objects.order_by("sequence").values_list("key_id", flat=True))
    assert kids == [chain.key_id(old_key.encode())] * 4 + [chain.key_id(ROTATED_KEY.encode())] * 4
    assert verify_chain().ok

    settings.AUDIT_HMAC_PREVIOUS_KEYS = []
    assert kind_at(verify_chain()) == ("unknown_key", 1)


# --- Incremental verification --------------------------------------------------------------------


def test_an_incremental_run_walks_only_what_came_after_the_last_verification(owner) -> None:
    seed_events(30, owner)
    full = audit_chain_verify()
    assert full.ok and full.mode == "full" and full.events_checked == 30
    seed_events(5, owner)
    report = audit_chain_verify(incremental=True)
    assert report.ok, report.summary()
    assert (report.mode, report.from_sequence) == ("incremental", 30)
    assert report.events_checked == 6  # the chain_verified event #31 and five new ones
    assert report.last_sequence == 36
    # And the next one starts where that one stopped.
    assert audit_chain_verify(incremental=True).from_sequence == 36


def test_an_incremental_run_without_a_marker_walks_everything(owner) -> None:
    seed_events(7, owner)
    report = verify_chain(incremental=True)
    assert report.ok and report.mode == "full" and report.events_checked == 7


def test_an_incremental_run_catches_tampering_after_the_marker(owner) -> None:
    seed_events(10, owner)
    audit_chain_verify()
    seed_events(10, owner)
    forge_from(15, {"n": "forged"}, key="plain")
    report = verify_chain(incremental=True)
    assert report.mode == "incremental"
    assert kind_at(report) == ("hash_mismatch", 15)


def test_a_forged_marker_is_not_trusted(owner) -> None:
    seed_events(10, owner)
    verified = audit_chain_verify()
    seed_events(10, owner)
    event = AuditEvent.objects.get(sequence=11)
    assert event.details["head_sequence"] == 10 and verified.ok
    # Move the marker forward to skip events 11..21, signature and all: without the key it
    # cannot be re-signed, so the run starts from nothing and the edit itself is caught.
    forged = {**event.details, "head_sequence": 21, "head_hash": fields_of(21)["prev_hash"]}
    raw_sql("UPDATE audit_auditevent SET details = %s WHERE sequence = 11", [json.dumps(forged)])
    report = verify_chain(incremental=True)
    assert report.mode == "full"
    assert kind_at(report) == ("hash_mismatch", 11)


def test_a_marker_whose_event_was_altered_is_not_used(owner) -> None:
    seed_events(10, owner)
    audit_chain_verify()
    raw_sql("UPDATE audit_auditevent SET hash = %s WHERE sequence = 10", ["e" * 64])
    report = verify_chain(incremental=True)
    assert report.mode == "full"
    assert kind_at(report) == ("hash_mismatch", 10)


def test_an_incremental_run_does_not_reread_the_past_a_full_run_does(owner) -> None:
    seed_events(10, owner)
    audit_chain_verify()
    raw_sql("UPDATE audit_auditevent SET details = %s WHERE sequence = 4", ['{"n": 999}'])
    assert verify_chain(incremental=True).ok  # documented: the daily full run covers this
    assert kind_at(verify_chain()) == ("hash_mismatch", 4)


def test_the_command_runs_full_by_default_and_incremental_on_request(owner) -> None:
    seed_events(12, owner)
    out, err = StringIO(), StringIO()
    call_command("verify_audit_chain", stdout=out, stderr=err)
    assert "OK" in out.getvalue() and "incremental" not in out.getvalue()
    seed_events(3, owner)
    out = StringIO()
    call_command("verify_audit_chain", "--incremental", stdout=out, stderr=err)
    assert "incremental from #12" in out.getvalue()
    out = StringIO()
    call_command("verify_audit_chain", "--full", stdout=out, stderr=err)
    assert "incremental" not in out.getvalue() and "OK" in out.getvalue()
    latest = AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED).order_by("-sequence")
    assert [e.details["mode"] for e in latest[:3]] == ["full", "incremental", "full"]


def test_a_run_is_recorded_with_its_duration_and_signed_head(owner, settings) -> None:
    seed_events(3, owner)
    report = audit_chain_verify()
    event = AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED).get()
    details = event.details
    assert details["head_sequence"] == 3 and details["head_hash"] == fields_of(4)["prev_hash"]
    assert details["duration_seconds"] == round(report.duration_seconds, 3)
    key = settings.AUDIT_HMAC_KEY.encode()
    assert details["marker_signature"] == chain.verification_marker_signature(
        key, sequence=3, head_hash=details["head_hash"], kid=chain.key_id(key)
    )
    assert timezone.now() - event.occurred_at < timedelta(minutes=1)


def test_a_chain_rewritten_since_a_verification_disagrees_with_its_marker(owner) -> None:
    seed_events(5, owner)
    forge_from(1, fields_of(1)["details"], key="unkeyed")  # as written before the upgrade
    seed_events(5, owner)
    assert audit_chain_verify().ok  # its marker vouches for #10
    # No checkpoint exists; every event from #2 rewritten as format 1 (the keys stripped),
    # the verification's own event too, its signed marker copied as it was.
    forge_from(2, {"n": "forged"}, key="unkeyed")
    report = verify_chain()
    assert kind_at(report) == ("marker_mismatch", 10)
    assert "event #11" in report.problem.message  # type: ignore[union-attr]
