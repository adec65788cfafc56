"""The DLP detectors on positive and negative examples, and typed placeholders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrails import dlp

ALL = list(dlp.DETECTORS)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75\n-----END RSA PRIVATE KEY-----"


def found(text: str, detectors: list[str] | None = None) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in dlp.scan(text, detectors or ALL)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # E-mail
        ("Write to alice.smith@example.co.uk today", [("EMAIL", "alice.smith@example.co.uk")]),
        ("cc: Bob+sales@mail.acme-corp.com.", [("EMAIL", "Bob+sales@mail.acme-corp.com")]),
        # Payment cards: 13–19 digits, spaces or dashes, Luhn
        ("Card 4111 1111 1111 1111 expires", [("CARD", "4111 1111 1111 1111")]),
        ("card: 5500-0000-0000-0004", [("CARD", "5500-0000-0000-0004")]),
        ("amex 378282246310005 ok", [("CARD", "378282246310005")]),
        ("13 digits 4222222222222", [("CARD", "4222222222222")]),
        # IBAN, mod-97
        ("Pay DE89 3704 0044 0532 0130 00 please", [("IBAN", "DE89 3704 0044 0532 0130 00")]),
        ("GB82 WEST 1234 5698 7654 32", [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
        ("NL91ABNA0417164300", [("IBAN", "NL91ABNA0417164300")]),
        # Phones: international and national formats
        ("Call +44 20 7946 0958 now", [("PHONE", "+44 20 7946 0958")]),
        ("ring +1 (415) 555-2671", [("PHONE", "+1 (415) 555-2671")]),
        ("US office (555) 123-4567", [("PHONE", "(555) 123-4567")]),
        ("fax 555.123.4567", [("PHONE", "555.123.4567")]),
        ("London 020 7946 0958", [("PHONE", "020 7946 0958")]),
        ("mobile 07700900123", [("PHONE", "07700900123")]),
        # National ids
        ("SSN 123-45-6789", [("US_SSN", "123-45-6789")]),
        ("NINO AB 12 34 56 C", [("UK_NINO", "AB 12 34 56 C")]),
        ("SIN 130-692-544", [("CA_SIN", "130-692-544")]),
        ("DNI 12345678Z and NIE X1234567L", [("ES_DNI", "12345678Z"), ("ES_DNI", "X1234567L")]),
        # Secrets
        ("key AKIAIOSFODNN7EXAMPLE here", [("AWS_KEY", "AKIAIOSFODNN7EXAMPLE")]),
        ("temp ASIAY34FZKBOKMUTVV7A", [("AWS_KEY", "ASIAY34FZKBOKMUTVV7A")]),
        (
            "Authorization: Bearer eyJhbGciOi.J9x8Kq2Lm4Np7Rs0",
            [("TOKEN", "eyJhbGciOi.J9x8Kq2Lm4Np7Rs0")],
        ),
        (
            "OPENAI_API_KEY=sk-proj-4fT9xQ2mZ8vB1nK7pL3wR6yH",
            [("TOKEN", "sk-proj-4fT9xQ2mZ8vB1nK7pL3wR6yH")],
        ),
        (
            "token ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            [("TOKEN", "ghp_16C7e42F292c6912E7710c838347Ae178B4a")],
        ),
        (  # this product's own API keys, e.g. pasted into a chat
            "use eai_k3v9x2qa_Q2x9fLm3Pq7Zr8Tt6Yw1Vb4Nc5Hd0Je2Kg9Lp3Ms7Ua please",
            [("TOKEN", "eai_k3v9x2qa_Q2x9fLm3Pq7Zr8Tt6Yw1Vb4Nc5Hd0Je2Kg9Lp3Ms7Ua")],
        ),
        (f"x\n{PEM}\ny", [("PRIVATE_KEY", PEM)]),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq (cut off)",
            [("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq (cut off)")],
        ),
    ],
)
def test_detectors_find_their_data(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112 fails the Luhn check",
        "DE88 3704 0044 0532 0130 00 has a wrong check digit",
        "GB82 WEST 1234 5698 7654 33",
        "In 2024 revenue was $1,250,000.00 across 4 500 orders.",
        "Order number 123456789 shipped; invoice 20240517-0042.",
        "Version 10.2.3 on 192.168.100.200, released 2024-05-06.",
        "ISBN 978-3-16-148410-0 and ticket #48213",
        "SSN-shaped but never issued: 000-12-3456, 666-12-3456, 900-12-3456",
        "NINO with an invalid prefix: QQ 12 34 56 C",
        "DNI with the wrong letter: 12345678A",
        "SIN failing Luhn: 130-692-545",
        "AKIA followed by too few: AKIA1234",
        "Bearer tokens are described in RFC 6750.",
        "We use sk-learn-pipeline-configuration-guide for the model.",
        "-----BEGIN PUBLIC KEY----- is fine to share",
        "Meet at 10:30, room 4.12, call ext. 4412.",
        "email me at alice at example dot com",
    ],
)
def test_lookalikes_are_not_findings(text: str) -> None:
    assert found(text) == []


def test_only_enabled_detectors_and_national_ids_run() -> None:
    text = "alice@example.com 123-45-6789 AB 12 34 56 C"
    assert [t for t, _ in found(text, [dlp.PHONE])] == []
    assert dlp.scan(text, [dlp.EMAIL])[0].type == "EMAIL"
    only_ssn = dlp.scan(text, [dlp.NATIONAL_ID], national_ids=[dlp.US_SSN])
    assert [f.type for f in only_ssn] == ["US_SSN"]


def test_a_card_inside_a_key_block_is_one_finding() -> None:
    text = "-----BEGIN PRIVATE KEY-----\n4111 1111 1111 1111\n-----END PRIVATE KEY-----"
    assert [t for t, _ in found(text)] == ["PRIVATE_KEY"]


def test_redaction_gives_each_value_one_placeholder_across_texts() -> None:
    mapping: dict[str, str] = {}
    first = "Mail alice@example.com or BOB@example.com, card 4111 1111 1111 1111."
    second = "Again: Alice@Example.com and 4111-1111-1111-1111; new carol@example.com"
    one = dlp.redact(first, dlp.scan(first, ALL), mapping)
    two = dlp.redact(second, dlp.scan(second, ALL), mapping)
    assert one == "Mail [EMAIL_1] or [EMAIL_2], card [CARD_1]."
    assert two == "Again: [EMAIL_1] and [CARD_1]; new [EMAIL_3]"


def test_refusal_wording_names_the_kinds() -> None:
    assert dlp.describe({"CARD": 1}) == "a payment card number"
    assert dlp.describe(["CARD", "EMAIL"]) == "an e-mail address and a payment card number"


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if dlp.luhn_valid(body + check):
            return body + check
    raise AssertionError  # pragma: no cover


@given(
    prefix=st.sampled_from(["4", "51", "55", "37", "6011"]),
    rest=st.text("0123456789", min_size=11, max_size=14),
    sep=st.sampled_from(["", " ", "-"]),
)
def test_every_luhn_valid_card_is_found_and_redacted(prefix: str, rest: str, sep: str) -> None:
    number = _luhn_complete(prefix + rest)
    printed = sep.join(number[i : i + 4] for i in range(0, len(number), 4))
    text = f"My card is {printed}, thanks."
    findings = dlp.scan(text, [dlp.PAYMENT_CARD])
    assert [text[f.start : f.end] for f in findings] == [printed]
    assert dlp.redact(text, findings, {}) == "My card is [CARD_1], thanks."
    broken = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert dlp.scan(f"My card is {broken}.", [dlp.PAYMENT_CARD]) == []
