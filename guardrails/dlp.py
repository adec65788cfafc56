"""Data loss prevention: find personal data and secrets in text, and replace them.

`scan(text, detectors)` returns the findings (type and position, never a copy of the value
beyond what the caller already holds); `redact(text, findings, mapping)` replaces each
finding with a typed placeholder such as `[EMAIL_1]`. The mapping is kept by the caller for
one provider request, so the same value gets the same placeholder everywhere in it.

Each detector is a regular expression followed by a validation step where the data has one
(Luhn for payment cards, ISO 13616 mod-97 for IBANs, the issuing rules of national ids), so
that numbers which merely look right are not findings. The exact rules are in
docs/guardrails.md; change both together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

# --- Detector keys (what a policy enables) and finding types (what a placeholder says) -------

EMAIL = "email"
PHONE = "phone"
PAYMENT_CARD = "payment_card"
IBAN = "iban"
NATIONAL_ID = "national_id"
AWS_ACCESS_KEY = "aws_access_key"
PRIVATE_KEY = "private_key"
BEARER_TOKEN = "bearer_token"  # noqa: S105 - a detector's name

DETECTORS: dict[str, str] = {
    EMAIL: "E-mail addresses",
    PHONE: "Phone numbers",
    PAYMENT_CARD: "Payment card numbers (Luhn-checked)",
    IBAN: "IBANs (mod-97-checked)",
    NATIONAL_ID: "National identity numbers (the set chosen below)",
    AWS_ACCESS_KEY: "AWS access key ids and secret access keys",
    PRIVATE_KEY: "Private-key blocks (PEM)",
    BEARER_TOKEN: "Bearer tokens, API keys and passwords (in URLs and settings)",
}

US_SSN = "us_ssn"
UK_NINO = "uk_nino"
CA_SIN = "ca_sin"
ES_DNI = "es_dni"

NATIONAL_IDS: dict[str, str] = {
    US_SSN: "US Social Security number",
    UK_NINO: "UK National Insurance number",
    CA_SIN: "Canadian Social Insurance number",
    ES_DNI: "Spanish DNI / NIE",
}

# Finding type → (placeholder prefix, the phrase a refusal uses).
TYPES: dict[str, tuple[str, str]] = {
    "EMAIL": ("EMAIL", "an e-mail address"),
    "PHONE": ("PHONE", "a phone number"),
    "CARD": ("CARD", "a payment card number"),
    "IBAN": ("IBAN", "a bank account number (IBAN)"),
    "US_SSN": ("US_SSN", "a US Social Security number"),
    "UK_NINO": ("UK_NINO", "a UK National Insurance number"),
    "CA_SIN": ("CA_SIN", "a Canadian Social Insurance number"),
    "ES_DNI": ("ES_DNI", "a Spanish DNI/NIE number"),
    "AWS_KEY": ("AWS_KEY", "an AWS access key"),
    "PRIVATE_KEY": ("PRIVATE_KEY", "a private key"),
    "TOKEN": ("TOKEN", "an access token or API key"),
    "PASSWORD": ("PASSWORD", "a password"),
}

# The detectors that find credentials (rather than personal data): what logs mask.
SECRET_DETECTORS = (PRIVATE_KEY, AWS_ACCESS_KEY, BEARER_TOKEN)


@dataclass(frozen=True, slots=True)
class Finding:
    """`text[start:end]` is a value of `type` (one of TYPES)."""

    type: str
    start: int
    end: int


# --- Validation -------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards and Canadian SINs."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


# Lengths of the most common countries' IBANs; others only need 15–34 characters and mod 97.
IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27,
    "GB": 22, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24,
}  # fmt: skip


def _ssn_valid(value: str) -> bool:
    area, group, serial = re.split(r"[- ]", value)
    return area not in {"000", "666"} and area[0] != "9" and group != "00" and serial != "0000"


_NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino_valid(value: str) -> bool:
    prefix = value[:2].upper()
    return (
        prefix[0] not in "DFIQUV"
        and prefix[1] not in "DFIQUVO"
        and prefix not in _NINO_BAD_PREFIXES
    )


def _sin_valid(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    return digits[0] not in "08" and luhn_valid(digits)


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni_valid(value: str) -> bool:
    value = value.upper().replace("-", "").replace(" ", "")
    number, letter = value[:-1], value[-1]
    if number[0] in "XYZ":  # NIE: the leading letter stands for 0, 1 or 2
        number = str("XYZ".index(number[0])) + number[1:]
    return _DNI_LETTERS[int(number) % 23] == letter


def _card_valid(value: str) -> bool:
    digits = re.sub(r"[ -]", "", value)
    # Issuer prefixes start with 2–6 (Mastercard, Amex/Diners/JCB, Visa, Mastercard, Discover).
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _phone_valid(value: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", value)) <= 15


# --- Patterns ---------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)
# 13–19 digits, optionally in groups separated by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Country, check digits, then the BBAN as printed (groups of four) or unbroken.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_PHONES = (
    # International: +, a country code, then digit groups (spaces, dots, dashes, brackets).
    re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\d-])"),
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567.
    re.compile(r"(?<![\w-])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])"),
    # National with a trunk 0 and at least one separator: 020 7946 0958, 030-1234567.
    re.compile(r"(?<![\w-])0[1-9]\d{1,3}[ -]\d{3,4}[ -]?\d{3,4}(?![\w-])"),
    # UK mobiles written unbroken: 07700900123.
    re.compile(r"(?<![\w-])07\d{9}(?![\w-])"),
)
_SSN = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")
_NINO = re.compile(r"(?<!\w)[A-Za-z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-Da-d](?!\w)")
_SIN = re.compile(r"(?<![\w-])\d{3}([- ])\d{3}\1\d{3}(?![\w-])")
_DNI = re.compile(r"(?<!\w)[XYZxyz0-9]\d{7}-?[A-Za-z](?!\w)")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# A secret access key (40 characters of base64) is random text: only where it is named.
_AWS_SECRET = re.compile(
    r"(?i:(?:aws_?)?secret_?access_?key|aws_?secret_?key)[\"']?\s*[:=]\s*[\"']?"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
# A whole PEM private-key block; a block cut off before its END line runs to the end.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
    re.S,
)
# The token after "Bearer" or "Basic" (the word itself is kept), then well-known API key shapes.
_BEARER = re.compile(r"(?i:\b(?:bearer|basic))\s+([A-Za-z0-9._~+/-]{16,}=*)")
_API_KEYS = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # a JWT
    r"|eai_[a-z0-9]{8}_[A-Za-z0-9_-]{20,100}"  # this product's own API keys
    r")"
)
# A value given to a setting, header, query parameter or JSON field named like a credential:
# `api_key=…`, `X-Api-Key: …`, `"client_secret": "…"`, `?access_token=…`. The name's last
# part is enough (`OPENAI_API_KEY` ends in `API_KEY`); matching the whole name would
# backtrack on long runs of `a.a.a.`.
_KEY_NAMES = r"(?<![A-Za-z0-9])(?i:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|token|secret)"
_LOGIN_NAMES = r"(?<![A-Za-z0-9])(?i:password|passwd|passphrase|pwd)"
_ASSIGNED = r"[\"']?\s*[:=]\s*[\"']?"
_ASSIGNED_TOKEN = re.compile(_KEY_NAMES + _ASSIGNED + r"([A-Za-z0-9._~+/-]{8,}=*)")
# A quoted password runs to its closing quote (a passphrase has spaces).
_ASSIGNED_PASSWORD = re.compile(
    _LOGIN_NAMES + r"[\"']?\s*[:=]\s*"
    r"(?:\"([^\"\r\n]{3,200})\"|'([^'\r\n]{3,200})'|([^\s\"'&,;]{3,}))"
)
# The password of `scheme://user:password@host` (the user name is kept).
_URL_PASSWORD = re.compile(r"(?i:\b[a-z][a-z0-9+.-]{0,30})://[^\s:/?#@]*:([^\s/?#@]+)@")

# Every credential pattern above needs one of these (lower case) in the text, or (a URL's
# password) both "://" and "@": a log line without any is passed over without running a
# regular expression.
SECRET_HINTS = (
    "private key", "akia", "asia", "secret", "bearer", "basic", "key", "token", "passw",
    "pwd", "passphrase", "sk-", "sk_", "rk_", "pk_", "ghp_", "gho_", "ghu_", "ghs_",
    "ghr_", "github_pat_", "glpat-", "xox", "aiza", "eyj", "eai_",
)  # fmt: skip

Matcher = Callable[[str], Iterable[Finding]]


def _matches(
    pattern: re.Pattern[str], kind: str, valid: Callable[[str], bool] | None = None, group: int = 0
) -> Matcher:
    def find(text: str) -> Iterable[Finding]:
        for match in pattern.finditer(text):
            value = match.group(group)
            if valid is None or valid(value):
                yield Finding(kind, match.start(group), match.end(group))

    return find


def _assigned_passwords(text: str) -> Iterable[Finding]:
    for match in _ASSIGNED_PASSWORD.finditer(text):
        group = match.lastindex or 1
        yield Finding("PASSWORD", match.start(group), match.end(group))


def _iban(text: str) -> Iterable[Finding]:
    for match in _IBAN.finditer(text):
        value = match.group()
        # A trailing short group may belong to the next word: try without it too.
        while value:
            if iban_valid(value):
                yield Finding("IBAN", match.start(), match.start() + len(value))
                break
            cut = value.rfind(" ")
            value = value[:cut] if cut > 0 else ""


def _phones(text: str) -> Iterable[Finding]:
    # Digit groups inside something shaped like an IBAN (valid or not) are not phone numbers.
    ibans = [(m.start(), m.end()) for m in _IBAN.finditer(text)]
    for pattern in _PHONES:
        for finding in _matches(pattern, "PHONE", _phone_valid)(text):
            if not any(start < finding.end and finding.start < end for start, end in ibans):
                yield finding


def _secret_like(value: str) -> bool:
    """Random-looking: two digits or more among letters (not a hyphenated phrase)."""
    return sum(c.isdigit() for c in value) >= 2 and sum(c.isalpha() for c in value) >= 6


_DETECTORS: dict[str, Matcher] = {
    PRIVATE_KEY: _matches(_PRIVATE_KEY, "PRIVATE_KEY"),
    AWS_ACCESS_KEY: lambda text: [
        *_matches(_AWS_KEY, "AWS_KEY")(text),
        *_matches(_AWS_SECRET, "AWS_KEY", group=1)(text),
    ],
    BEARER_TOKEN: lambda text: [
        *_matches(_BEARER, "TOKEN", _secret_like, group=1)(text),
        *_matches(_API_KEYS, "TOKEN", _secret_like)(text),
        *_matches(_ASSIGNED_TOKEN, "TOKEN", _secret_like, group=1)(text),
        *_matches(_URL_PASSWORD, "PASSWORD", group=1)(text),
        *_assigned_passwords(text),
    ],
    EMAIL: _matches(_EMAIL, "EMAIL"),
    PAYMENT_CARD: _matches(_CARD, "CARD", _card_valid),
    IBAN: _iban,
    PHONE: _phones,
}
_NATIONAL: dict[str, Matcher] = {
    US_SSN: _matches(_SSN, "US_SSN", _ssn_valid),
    UK_NINO: _matches(_NINO, "UK_NINO", _nino_valid),
    CA_SIN: _matches(_SIN, "CA_SIN", _sin_valid),
    ES_DNI: _matches(_DNI, "ES_DNI", _dni_valid),
}
# When two findings overlap, the one found by the earlier detector here wins (a PEM block
# over the tokens inside it; a card or national id over a phone number of the same digits).
_PRIORITY = ["PRIVATE_KEY", "AWS_KEY", "TOKEN", "PASSWORD", "EMAIL", "CARD", "IBAN"]
_PRIORITY += ["US_SSN", "UK_NINO", "CA_SIN", "ES_DNI", "PHONE"]


def scan(
    text: str, detectors: Iterable[str], national_ids: Iterable[str] = tuple(NATIONAL_IDS)
) -> list[Finding]:
    """The findings in `text` of the enabled `detectors`, in order, none overlapping.

    `national_ids` chooses which national id formats the NATIONAL_ID detector looks for.
    Unknown detector keys are ignored (the policy's clean() refuses them).
    """
    enabled = set(detectors)
    found: list[Finding] = []
    for key, matcher in _DETECTORS.items():
        if key in enabled:
            found.extend(matcher(text))
    if NATIONAL_ID in enabled:
        for key in national_ids:
            if key in _NATIONAL:
                found.extend(_NATIONAL[key](text))
    found.sort(key=lambda f: (_PRIORITY.index(f.type), f.start))
    kept: list[Finding] = []
    for finding in found:
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


def may_hold_secret(text: str) -> bool:
    """False when `text` cannot hold a finding of SECRET_DETECTORS (a cheap test, no regex)."""
    if "://" in text and "@" in text:
        return True
    lowered = text.lower()
    for hint in SECRET_HINTS:  # noqa: SIM110 - twice as fast as any(); runs for every log line
        if hint in lowered:
            return True
    return False


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each type: what the audit trail records, never the values."""
    result: dict[str, int] = {}
    for finding in findings:
        result[finding.type] = result.get(finding.type, 0) + 1
    return dict(sorted(result.items()))


def describe(types: Iterable[str]) -> str:
    """'a payment card number and an e-mail address' for a refusal message."""
    phrases = [TYPES[t][1] for t in sorted(set(types), key=_PRIORITY.index)]
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _canonical(kind: str, value: str) -> str:
    """The form under which a value is recognised again: case, spaces and dashes ignored
    where they do not change the value."""
    if kind in {"CARD", "IBAN", "PHONE", "US_SSN", "CA_SIN", "UK_NINO", "ES_DNI"}:
        value = re.sub(r"[\s().-]", "", value)
    if kind in {"EMAIL", "IBAN", "UK_NINO", "ES_DNI"}:
        value = value.upper()
    return f"{kind}:{value}"


def redact(text: str, findings: Iterable[Finding], mapping: MutableMapping[str, str]) -> str:
    """`text` with each finding replaced by a typed placeholder, `[EMAIL_1]`, `[CARD_2]`, …

    `mapping` (canonical value → placeholder) is read and extended: pass the same one for
    every text of a request so a value keeps its placeholder throughout. It holds the
    values, so it lives in memory for one request only and is never stored or logged.
    """
    parts: list[str] = []
    position = 0
    for finding in sorted(findings, key=lambda f: f.start):
        key = _canonical(finding.type, text[finding.start : finding.end])
        placeholder = mapping.get(key)
        if placeholder is None:
            prefix = TYPES[finding.type][0]
            number = sum(1 for p in mapping.values() if p.startswith(f"[{prefix}_")) + 1
            placeholder = mapping[key] = f"[{prefix}_{number}]"
        parts += [text[position : finding.start], placeholder]
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)
