"""The policy: one row, validated, edited by administrators only, every change audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.test import Client

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from guardrails import dlp
from guardrails.models import GuardrailPolicy

pytestmark = pytest.mark.django_db

POLICY = "/admin/guardrails/guardrailpolicy/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def policy_form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "dlp_mode": "flag",
        "detectors": list(dlp.DETECTORS),
        "national_ids": list(dlp.NATIONAL_IDS),
        "injection_mode_input": "flag",
        "injection_mode_tools": "flag",
        "injection_threshold": "0.50",
    }
    data.update(overrides)
    return data


def test_there_is_one_policy_with_safe_defaults() -> None:
    policy = GuardrailPolicy.current()
    assert GuardrailPolicy.current().pk == policy.pk == 1
    assert (policy.dlp_mode, policy.injection_mode_input, policy.injection_mode_tools) == (
        "flag",
        "flag",
        "flag",
    )
    assert set(policy.detectors) == set(dlp.DETECTORS)
    GuardrailPolicy(dlp_mode="redact").save()  # a second "new" row is the same row
    assert GuardrailPolicy.objects.count() == 1
    assert GuardrailPolicy.current().dlp_mode == "redact"


@pytest.mark.parametrize(
    ("fields", "error_field"),
    [
        ({"dlp_mode": "shout"}, "dlp_mode"),
        ({"injection_mode_input": "redact"}, "injection_mode_input"),
        ({"injection_mode_tools": "maybe"}, "injection_mode_tools"),
        ({"detectors": ["email", "telepathy"]}, "detectors"),
        ({"detectors": "email"}, "detectors"),
        ({"detectors": []}, "detectors"),
        ({"national_ids": ["fr_insee"]}, "national_ids"),
        ({"injection_threshold": "0"}, "injection_threshold"),
        ({"injection_threshold": "1.5"}, "injection_threshold"),
    ],
)
def test_clean_refuses_unknown_choices(fields: dict[str, Any], error_field: str) -> None:
    policy = GuardrailPolicy.current()
    for name, value in fields.items():
        setattr(policy, name, value)
    with pytest.raises(ValidationError) as caught:
        policy.clean()
    assert error_field in caught.value.message_dict


def test_the_database_refuses_an_invalid_mode_that_skipped_clean() -> None:
    GuardrailPolicy.current()
    with pytest.raises(IntegrityError), transaction.atomic():
        GuardrailPolicy.objects.filter(pk=1).update(dlp_mode="shout")


def test_administrator_changes_the_policy_and_the_change_is_audited(administrator) -> None:
    client = client_for(administrator)
    page = client.get(POLICY, follow=True)
    assert page.status_code == 200
    assert page.redirect_chain[-1][0] == f"{POLICY}1/change/"
    response = client.post(
        f"{POLICY}1/change/",
        policy_form(dlp_mode="redact", detectors=["email", "payment_card"]),
    )
    assert response.status_code == 302, response.content.decode()
    policy = GuardrailPolicy.current()
    assert policy.dlp_mode == "redact" and policy.detectors == ["email", "payment_card"]
    changed = AuditEvent.objects.get(action=AuditAction.ADMIN_CHANGE)
    assert changed.actor == administrator
    assert (changed.target_type, changed.target_id) == ("other", "1")
    assert changed.details["model"] == "guardrails.guardrailpolicy"
    assert set(changed.details["changed_fields"]) == {"Personal data and secrets", "Detectors"}


def test_administrator_cannot_save_an_invalid_policy(administrator) -> None:
    client = client_for(administrator)
    response = client.post(f"{POLICY}1/change/", policy_form(injection_threshold="3"))
    assert response.status_code == 200  # the form again, with the error
    assert GuardrailPolicy.current().injection_threshold != 3
    assert not AuditEvent.objects.filter(action=AuditAction.ADMIN_CHANGE).exists()


def test_nobody_adds_or_deletes_the_policy(administrator) -> None:
    client = client_for(administrator)
    GuardrailPolicy.current()
    assert client.get(f"{POLICY}add/").status_code == 403
    assert client.post(f"{POLICY}1/delete/", {"post": "yes"}).status_code == 403
    assert GuardrailPolicy.objects.count() == 1


def test_compliance_officer_reads_but_cannot_change(compliance_officer) -> None:
    client = client_for(compliance_officer)
    page = client.get(POLICY, follow=True)
    assert page.status_code == 200 and b"Prompt injection" in page.content
    response = client.post(f"{POLICY}1/change/", policy_form(dlp_mode="off"))
    assert response.status_code == 403
    assert GuardrailPolicy.current().dlp_mode == "flag"


def test_staff_cannot_open_the_policy(staff_member, owner) -> None:
    for person in (staff_member, owner):
        client = client_for(person)
        assert client.get(f"{POLICY}1/change/").status_code in {302, 403}
        client.post(f"{POLICY}1/change/", policy_form(dlp_mode="off"))
    assert GuardrailPolicy.current().dlp_mode == "flag"
    assert not AuditEvent.objects.filter(action=AuditAction.ADMIN_CHANGE).exists()
