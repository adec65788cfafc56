"""Prompt-injection screening: a heuristic scorer for text that tries to steer the model.

`score(text)` normalises the text, then looks for weighted patterns of well-known attack
phrasings. The score is the sum of the weights of the rules that matched, capped at 1.0; the
policy's threshold decides what counts as an injection. Rules are deliberately specific
(an imperative plus what it targets: "ignore ... previous instructions", not "ignore"), so
ordinary business language ("please ignore the previous email's typo", "act as a reviewer")
stays below the threshold; weak signals ("act as", a base64 blob, invisible characters)
weigh little on their own and only add up with others.

Normalisation, applied before matching:

1. Unicode NFKC (full-width and styled letters become plain ones);
2. invisible characters removed (zero-width spaces and joiners, word joiner, BOM, bidi
   controls, Unicode tag characters) — their presence is a rule of its own;
3. common confusables (Cyrillic and Greek letters that look Latin) mapped to Latin;
4. lower case, whitespace collapsed;
5. a second variant with letters spaced out ("i g n o r e") joined and digits used as
   letters ("1gn0re") replaced, matched as well (a match only there adds `obfuscated`);
6. base64 blobs decoded, and the decoded text scored as well.

This is a heuristic, not a guarantee: a determined attacker can phrase an instruction no
pattern knows. That is why tool results are always passed to the model as delimited data
(conversations/generation.py) whatever the score. Rules, weights and the measured rates are
in docs/guardrails.md; change both together.
"""

# ruff: noqa: E501  (each rule's pattern stays on one line, so it reads as one alternation)

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]


def _rule(name: str, weight: float, pattern: str) -> Rule:
    return Rule(name, weight, re.compile(pattern, re.S | re.M))


_VERB_IGNORE = r"(?:ignore|disregard|forget|override|overrule|skip|bypass|drop|abandon|discard|set\s+aside|put\s+aside|throw\s+out)"
_PRIOR = r"(?:all|your|previous|prior|above|earlier|preceding|foregoing|initial|original|system)"
_INSTRUCTIONS = r"(?:instructions?|prompts?|rules|directives?|guidelines|guidance|commands?|constraints|programming|training|orders|polic(?:y|ies)|context)"
_AI = r"(?:ai|a\.i\.|assistant|model|chatbot|bot|llm|language model|gpt|chatgpt|claude|you)"
_LIMITS = r"(?:restrictions?|limitations?|limits|filters?|filtering|guidelines|rules|censorship|safeguards|guardrails|ethics|morals|content polic(?:y|ies)|safety\s+checks|moderation)"

RULES: tuple[Rule, ...] = (
    # Direct override
    _rule(
        "ignore_previous_instructions",
        0.8,
        rf"\b{_VERB_IGNORE}\b[^.\n]{{0,40}}?\b{_PRIOR}\b[^.\n]{{0,40}}?\b{_INSTRUCTIONS}\b",
    ),
    _rule(
        "disregard_system_prompt",
        0.8,
        rf"\b(?:{_VERB_IGNORE}|violate|break|leak)\b[^.\n]{{0,40}}\b(?:system|developer|hidden)\s+(?:prompt|message|instructions?)\b",
    ),
    _rule(
        "given_instructions_aside",
        0.7,
        rf"\b{_VERB_IGNORE}\b[^.\n]{{0,30}}?\b{_INSTRUCTIONS}\s+(?:that\s+)?(?:you\s+(?:were|have\s+been)\s+given|you\s+(?:received|got|have)|given\s+to\s+you)\b",
    ),
    _rule(
        "rules_do_not_apply",
        0.6,
        rf"\b(?:{_INSTRUCTIONS}|{_LIMITS})\s+(?:do(?:es)?\s*n[o']t|do(?:es)?\s+not|no\s+longer|don't)\s+apply\s+to\s+you\b|\byou\s+(?:have|are\s+under|operate\s+with(?:out)?)\s+no\s+(?:\w+\s+)?{_LIMITS}",
    ),
    _rule(
        "system_override",
        0.6,
        r"\b(?:system|admin|administrator|root|developer)\s+(?:override|access\s+granted)\b|\bauthori[sz]ed\s+(?:jailbreak|override|red[\s-]team)\b|\bthis\s+is\s+a\s+jailbreak\b",
    ),
    _rule(
        "forget_everything",
        0.7,
        r"\b(?:forget|erase|clear|reset)\b\s+(?:everything|all(?: of it| that)?|your memory)\b[^.\n]{0,40}\b(?:above|before|so far|said|told|you know|you were told|instructions)\b",
    ),
    _rule(
        "new_instructions",
        0.6,
        r"(?:\b(?:new|updated|real|actual|true|revised|override|secret)\s+(?:instructions?|directives?|orders|system prompt|task|objective|rules)\s*(?:are|is|follow)?\s*[:\-–]|\bimportant\s*[:!]+\s*(?:new\s+|updated\s+)?(?:instructions?|directives?|update))",
    ),
    _rule(
        "your_new_role",
        0.6,
        r"\byour\s+(?:new|real|true|actual|only)\s+(?:role|task|purpose|goal|objective|job|instructions?|identity)\s+(?:is|are|will be)\b",
    ),
    _rule(
        "instead_follow",
        0.5,
        r"\b(?:instead|from now on|henceforth|going forward),?\s+(?:you\s+(?:must|will|should|shall)\s+)?(?:only\s+)?(?:follow|obey|comply with|execute|do as)\b[^.\n]{0,30}\b(?:instructions?|commands?|orders|me|these|this|the following)\b",
    ),
    _rule(
        "disable_safety",
        0.7,
        rf"\b(?:disable|turn off|deactivate|bypass|remove|override|circumvent|ignore|lift)\b\s+(?:all\s+|any\s+|your\s+|the\s+)*(?:safety\s+|content\s+|security\s+|ethical\s+)?{_LIMITS}",
    ),
    # Role-play jailbreaks
    _rule(
        "dan_persona",
        0.9,
        r"\b(?:you\s+are|you're|act\s+as|become|pretend\s+to\s+be|roleplay\s+as|role-play\s+as)\s+(?:now\s+)?(?:a\s+|an\s+)?(?:dan|stan|dude|aim|evilbot|maximum)\b|\bdo\s+anything\s+now\b",
    ),
    _rule(
        "jailbreak_mode",
        0.7,
        r"\b(?:jailbreak|jailbroken|god|dan|unrestricted|unfiltered|uncensored|evil)\s+mode\b|\bjailbreak(?:ing)?\s+(?:you|the\s+(?:ai|model|assistant))\b",
    ),
    _rule(
        "developer_mode",
        0.4,
        r"\b(?:developer|dev|debug|maintenance|sudo|admin)\s+mode\b\s*(?:enabled|activated|on\b|output)|\b(?:enable|activate|enter|switch\s+to|with)\s+(?:the\s+)?(?:developer|dev|debug|sudo)\s+mode\b",
    ),
    _rule(
        "unrestricted_ai",
        0.5,
        rf"\b{_AI}\b[^.\n]{{0,40}}\b(?:without|with\s+no|free\s+(?:of|from)|not\s+bound\s+by|no\s+longer\s+(?:bound|restricted|limited)\s+by|unconstrained\s+by)\s+(?:any\s+)?{_LIMITS}|\b(?:no|without)\s+{_LIMITS}\b[^.\n]{{0,20}}\b{_AI}\b|\b(?:unrestricted|unfiltered|uncensored|unaligned)\s+{_AI}\b",
    ),
    _rule(
        "pretend_persona",
        0.4,
        r"\b(?:pretend|imagine|suppose)\s+(?:that\s+)?(?:you\s+are|you're|to\s+be|you\s+were)\b|\b(?:roleplay|role-play)\s+as\b|\bstay\s+in\s+character\b|\byou\s+are\s+no\s+longer\s+(?:an?\s+)?(?:ai|assistant|chatgpt|claude|bound)\b",
    ),
    _rule(
        "no_limits",
        0.3,
        rf"\b(?:with\s+no|without\s+any|free\s+(?:of|from)\s+(?:all|any))\s+{_LIMITS}\b",
    ),
    _rule("act_as", 0.2, r"\bact\s+as\b|\bfrom\s+now\s+on,?\s+you\b"),
    _rule(
        "opposite_mode",
        0.5,
        r"\b(?:answer|respond|reply)\s+(?:as|like)\s+(?:both|two)\b|\btwo\s+(?:responses|answers)\b[^.\n]{0,40}\b(?:normal|filtered|classic)\b",
    ),
    # System prompt extraction
    _rule(
        "reveal_system_prompt",
        0.7,
        r"\b(?:reveal|show|print|output|repeat|display|dump|leak|disclose|expose|paste|recite|spell\s+out|give\s+me|tell\s+me|share|list|what\s+(?:is|are|was|were))\b[^.\n]{0,30}?\b(?:your|its)\s+(?:system\s+prompt|system\s+message|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|(?:original|secret|internal|confidential|full|pre-?prompt)\s+(?:prompt|instructions)|instructions\s+(?:above|you\s+were\s+given)|prompt)\b",
    ),
    _rule(
        "dump_system_prompt",
        0.7,
        r"\b(?:reveal|show|print|output|repeat|display|dump|leak|disclose|expose|paste|recite)\b[^.\n]{0,20}?\bthe\s+(?:(?:hidden|secret|original|initial|full|internal|confidential)\s+)?(?:system\s+(?:prompt|message)|(?:hidden|secret|initial|internal)\s+instructions)\b(?!\s+(?:field|setting|column|option|box|template|feature|page))",
    ),
    _rule(
        "instructions_received",
        0.7,
        r"\b(?:text|contents?|wording|copy)\s+of\s+(?:the\s+|your\s+)?(?:(?:exact|full|initial|original|hidden|secret|system|first)\s+)*(?:instructions|prompt|system\s+message)\b(?!\s+(?:field|setting|form|page|template))[^.\n]{0,40}\b(?:you\s+(?:received|were\s+given|got)|before\s+this\s+conversation|nothing\s+else)|\b(?:contents?|text)\s+of\s+your\s+(?:(?:initial|original|hidden|secret|system|first)\s+)?(?:instructions|prompt)\b",
    ),
    _rule(
        "repeat_above",
        0.7,
        r"\b(?:repeat|print|output|copy|reproduce)\b[^.\n]{0,30}\b(?:everything|all|the\s+(?:text|words|lines|content))\s+(?:above|before|prior|preceding)\b|\b(?:starting|beginning)\s+with\s+[\"'“]?you\s+are\b",
    ),
    # Hidden instructions (typical of tool output and documents)
    _rule(
        "hidden_comment",
        0.7,
        r"<!--\s*(?:assistant|system|ai|llm|instructions?|prompt|note\s+to\s+(?:the\s+)?(?:ai|assistant|model))\b|<!--[^>]{0,300}?\b(?:ignore|you\s+must|instructions?|assistant|the\s+user\s+(?:wants|asked))\b",
    ),
    _rule(
        "role_marker_line",
        0.5,
        r"^\s*(?:#+\s*)?(?:system|assistant|developer|instructions?)\s*:",
    ),
    _rule(
        "chat_template_token",
        0.7,
        r"<\|(?:im_start|im_end|system|endoftext|start_header_id)\|>|\[/?(?:inst|sys)\]|^\s*\[(?:system|assistant|admin|developer)\]|<<\s*/?sys\s*>>|</?(?:system|instructions?)>|\{\{\s*system\s*\}\}",
    ),
    _rule(
        "addressed_to_ai",
        0.5,
        r"\b(?:note|message|instructions?|attention|reminder)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:ai|assistant|language\s+model|llm|chatbot|model|agent)s?\b|\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|assistant|language\s+model|llm|chatbot|agent)\b|\b(?:ai|llm)\s+(?:assistants?|agents?|models?)\s+(?:reading|processing|summari[sz]ing)\s+this\b",
    ),
    _rule(
        "vocative_to_ai",
        0.3,
        r"^\s*(?:dear\s+)?(?:assistant|ai|chatbot|model|llm)\s*,",
    ),
    _rule(
        "harvest_secrets",
        0.5,
        r"\b(?:include|add|append|insert|attach|list)\b[^.\n]{0,30}\b(?:the\s+)?(?:user'?s?|their|everyone'?s?)\s+(?:api\s+keys?|passwords?|credentials|secrets?|tokens?|private\s+keys?)\b",
    ),
    _rule(
        "grandma_exploit",
        0.4,
        r"\b(?:late\s+)?(?:grandma|grandmother|granny)\b[^.\n]{0,80}\b(?:passwords?|api\s+keys?|license\s+keys?|serial\s+(?:numbers?|keys?)|napalm|credentials)\b",
    ),
    _rule(
        "conceal_from_user",
        0.6,
        r"\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention\s+(?:this\s+)?to|reveal\s+(?:this\s+)?to|let)\s+the\s+user\b|\bwithout\s+(?:telling|informing|alerting)\s+the\s+user\b",
    ),
    _rule(
        "exfiltrate",
        0.5,
        r"\b(?:send|forward|email|e-mail|post|upload|exfiltrate|transmit)\b[^.\n]{0,40}\b(?:conversation|chat\s+history|previous\s+messages|user'?s?\s+(?:data|messages|credentials|password|files)|api\s+keys?|passwords?|secrets?|credentials)\b[^.\n]{0,40}\b(?:to|at)\s+(?:https?://|\S+@|[a-z0-9-]+\.[a-z]{2,})|!\[[^\]]*\]\(https?://[^)]*[?&][a-z_]+=\s*(?:\{|\[|<)",
    ),
)

# Signals computed on the raw text, not with patterns over the normalised one.
INVISIBLE_WEIGHT = 0.4
TAG_CHARACTERS_WEIGHT = 0.8
BASE64_WEIGHT = 0.3
OBFUSCATED_WEIGHT = 0.2

_INVISIBLE = re.compile(
    "[\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"
    "\u202a-\u202e\u2066-\u2069\u00ad\u180e]"
)
_TAGS = re.compile("[\U000e0000-\U000e007f]")
_EMOJI_JOIN = re.compile(
    "(?<=[\U0001f000-\U0001faff\u2600-\u27bf])\u200d(?=[\U0001f000-\U0001faff\u2600-\u27bf])"
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k",
        "м": "m", "н": "h", "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y", "х": "x",
        "ԁ": "d", "ɡ": "g", "ո": "n", "ս": "u", "ԝ": "w",
        # Greek
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "γ": "y",
    }
)  # fmt: skip
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
# Four or more single letters separated by spaces, dots or dashes: "i g n o r e"; a wider
# gap in such a run separates words.
_SPACED = re.compile(r"(?<![a-z])(?:[a-z](?: {1,3}|[.*_-])){3,}[a-z](?![a-z])")


@dataclass(frozen=True, slots=True)
class InjectionScore:
    """How much `text` looks like an attempt to give the model instructions."""

    score: float
    rules: tuple[str, ...]

    def over(self, threshold: float) -> bool:
        return bool(self.rules) and self.score >= threshold


def _plain(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _TAGS.sub("", _INVISIBLE.sub("", text))
    return text.lower().translate(_CONFUSABLES)


def _collapse(text: str) -> str:
    # Runs of spaces and tabs become one space; line starts stay (role markers are per line).
    return re.sub(r"[^\S\n]+", " ", text)


def normalise(text: str) -> str:
    """NFKC, invisible characters removed, confusables mapped, lower case, one space."""
    return _collapse(_plain(text))


def _join_spaced(match: re.Match[str]) -> str:
    words = re.split(r" {2,}", match.group())
    return " ".join(re.sub(r"[ .*_-]", "", word) for word in words)


def _deobfuscate(plain: str) -> str:
    """Spaced-out letters joined ("i g n o r e" → "ignore"), digits read as letters."""
    return _collapse(_SPACED.sub(_join_spaced, plain.translate(_LEET)))


def _decoded_blobs(text: str) -> list[str]:
    decoded: list[str] = []
    for match in _BASE64.finditer(text):
        blob = match.group()
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            value = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if value and sum(c.isprintable() or c.isspace() for c in value) / len(value) > 0.9:
            decoded.append(value)
    return decoded


def _matching(text: str) -> set[str]:
    return {rule.name for rule in RULES if rule.pattern.search(text)}


def score(text: str, *, _depth: int = 0) -> InjectionScore:
    """Score `text` from 0.0 (nothing) to 1.0; return the names of the rules that matched."""
    weights = {rule.name: rule.weight for rule in RULES}
    plain = _plain(text)
    matched = _matching(_collapse(plain))
    hidden = _matching(_deobfuscate(plain)) - matched
    if hidden:
        matched |= hidden | {"obfuscated"}
        weights["obfuscated"] = OBFUSCATED_WEIGHT
    if _TAGS.search(text):
        matched.add("tag_characters")
        weights["tag_characters"] = TAG_CHARACTERS_WEIGHT
    if _INVISIBLE.search(_EMOJI_JOIN.sub("", text)):
        matched.add("invisible_characters")
        weights["invisible_characters"] = INVISIBLE_WEIGHT
    blobs = _decoded_blobs(text) if _depth == 0 else []
    if _BASE64.search(text):
        matched.add("base64_blob")
        weights["base64_blob"] = BASE64_WEIGHT
    for blob in blobs:
        inner = score(blob, _depth=1)
        for name in inner.rules:
            if name != "base64_blob":
                matched.add(name)
                weights.setdefault(name, INVISIBLE_WEIGHT)
    total = min(1.0, round(sum(weights[name] for name in matched), 2))
    return InjectionScore(total, tuple(sorted(matched)))
