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

On top of the rules, a co-occurrence layer (`SIGNALS`, `CLAUSE_RULES`) tags words into
lexical categories — an override verb, the model's own rules, an extraction verb, the model's
own set-up, a persona switch, a permission claim, an authority claim — and scores only when
two categories meet in one clause or two adjacent ones ("set aside whatever rules you were
given", "a persona that never refuses"). A category alone never scores, so "ignore the typos
in my notes" or "act as an editor" stay at 0; that layer is what lets the scorer generalise
beyond the phrasings the rules were written for.

This is a heuristic, not a guarantee: a determined attacker can phrase an instruction no
pattern knows. That is why tool results are always passed to the model as delimited data
(conversations/generation.py) whatever the score. Rules, weights and the measured rates are
in docs/guardrails.md; change both together.
"""

# ruff: noqa: E501  (each rule's pattern stays on one line, so it reads as one alternation)

from __future__ import annotations

import base64
import binascii
import bisect
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
        r"(?:\b(?:new|updated|real|actual|true|revised|override|secret)\s+(?:instructions?|directives?|orders|system prompt|task|objective|rules?)\s*(?:are|is|follow)?\s*[:\-–]|\bimportant\s*[:!]+\s*(?:new\s+|updated\s+)?(?:instructions?|directives?|update))",
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
        rf"\b(?:disable|turn off|deactivate|bypass|remove|override|circumvent|ignore|lift)\b\s+(?:all\s+|any\s+|your\s+|the\s+)*(?:safety\s+|content\s+|security\s+|ethical\s+)?{_LIMITS}\b(?!\s+(?:in|on|of|for)\s+(?:the|our|this|that|a|my)\b)",
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
        r"\b(?:note|message|instructions?|attention|reminder)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:ai|assistant|language\s+model|llm|chatbot|model|agent)s?\b(?!\s+(?:manager|director|head|editor|professor|principal|controller|coach|secretary|accountant|buyer|planner|producer|supervisor|team|to)\b)|\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|assistant|language\s+model|llm|chatbot|agent)\b|\b(?:ai|llm)\s+(?:assistants?|agents?|models?)\s+(?:reading|processing|summari[sz]ing)\s+this\b",
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
        r"\b(?:send|forward|email|e-mail|post|upload|exfiltrate|transmit)\b[^.\n]{0,40}\b(?:conversation(?!\s+(?:summary|notes|minutes))|chat\s+history|previous\s+messages|user'?s?\s+(?:data|messages|credentials|password|files)|api\s+keys?|passwords?|secrets?|credentials)\b[^.\n]{0,40}\b(?:to|at)\s+(?:https?://|\S+@|[a-z0-9-]+\.[a-z]{2,})|!\[[^\]]*\]\(https?://[^)]*[?&][a-z_]+=\s*(?:\{|\[|<)",
    ),
)

# Co-occurrence layer. The rules above know exact phrasings; attackers vary the wording.
# So words are also tagged into lexical categories (an override verb, the rules that govern
# the model, an extraction verb, the model's own set-up, a persona switch, a permission
# claim, an authority claim), and a signal fires only when two categories meet: within one
# clause, or in two adjacent clauses, and within `reach` characters. One category alone
# never scores: "ignore the typos", "show me how", "act as an editor", "no restrictions on
# the font" each hit one category. Categories are bounded alternations (no nested
# repetition), matched independently, so the cost stays linear in the text.

_GOVERNING = r"(?:instructions?|rules|guidance|guidelines|constraints|polic(?:y|ies)|directives?|prompts?|orders|commands|protocols?|limits|limitations|restrictions|boundaries|programming|training|configuration|setup|set-up|principles|filters|safeguards|guardrails|ethics|morals)"
# Governing words that name the model's rules with any determiner ("the content policy").
_GOVERNING_AI = r"(?:content\s+polic(?:y|ies)|usage\s+polic(?:y|ies)|safety\s+(?:training|guidelines|rules|protocols?|filters?|checks|measures|layer|settings|restrictions|polic(?:y|ies)|features)|(?:content|safety)\s+filter(?:s|ing)?|safeguards|guardrails|censorship|ethical\s+(?:guidelines|rules|constraints|limits)|moral\s+(?:limits|constraints|guidelines|rules)|system\s+(?:prompt|instructions?|message))"
# Whose rules: the model's ("your", "you were given", "they told you"), not a document's.
_YOU_WERE = r"(?:(?:that|which)\s+)?(?:you(?:'ve|'re|\s+have|\s+were|\s+had|\s+are)?\s+(?:been\s+)?|(?:they|the\s+developers?|your\s+\w+|openai|anthropic|the\s+(?:operator|company|admin)|someone)\s+(?:have\s+|has\s+)?)(?:given|gave\s+you|told|configured|set\s+up|programmed|trained|instructed|loaded|provided|received|got|started\s+with|operat(?:e|ing)\s+under|follow|must\s+follow|have\s+to\s+follow|built\s+with|bound\s+by|put\s+in|(?:wrote|set|made|prepared|defined)\s+for\s+you)\b"
_NOT_ABOUT = r"(?!\s+(?:for|on|about|regarding|of|when|to)\b)"
_OWN_RULES = (
    rf"\b(?:your|the\s+(?:ai|assistant|model|bot|chatbot)'s)\s+(?:[\w'-]+\s+){{0,2}}?{_GOVERNING}\b{_NOT_ABOUT}"
    rf"|\b{_GOVERNING}\s+{_YOU_WERE}"
    rf"|\b{_GOVERNING}\s+given\s+to\s+you\b"
    rf"|\b(?:openai|anthropic|google|microsoft|meta|(?:your|the)\s+(?:developers?|creators?|makers?|operators?))(?:'s?)?\s+{_GOVERNING}\b"
    r"|\b(?:everything|anything|all|whatever|what)\s+(?:that\s+)?(?:you(?:'ve|\s+have|\s+were|\s+had)?|they|someone)\s+(?:been\s+)?(?:told|instructed|given|taught|programmed|set\s+up\s+with)(?:\s+you)?\b"
    r"|\bwhat\s+they\s+told\s+you\b"
    rf"|\b{_GOVERNING_AI}\b"
)
_OVERRIDE = r"\b(?:ignore|ignoring|overlook|disregard(?:ing)?|forget(?:ting)?|drop(?:ping)?|set(?:ting)?\s+aside|put\s+aside|abandon|discard|ditch|skip|bypass|circumvent|get\s+around|override|overrule|supersedes?|suspend|unlock|lift|remove|disable|deactivate|turn\s+off|switch\s+off|break|violate|wipe|throw\s+out|pay\s+no\s+attention\s+to|(?:do\s+not|don't|dont|stop|no\s+longer|cease|quit|never|not)\s+(?:have\s+to\s+)?(?:follow(?:ing)?|obey(?:ing)?|adher(?:e|ing)\s+to|abid(?:e|ing)\s+by|respect(?:ing)?|listen(?:ing)?\s+to|enforc(?:e|ing))|(?:free|freed|released|liberated|unbound)\s+(?:from|of)|(?:not|no\s+longer)\s+(?:bound|restricted|limited|constrained|governed)\s+by)\b"
# The same, said of the rules after naming them: "safety protocols suspended", "filters are off".
_OVERRIDDEN = r"\b(?:(?:are|is|have\s+been|has\s+been|now)\s+)?(?:suspended|disabled|lifted|removed|deactivated|void|overridden|waived|revoked|turned\s+off|switched\s+off|(?:are|is)\s+(?:now\s+)?off|no\s+longer\s+(?:apply|applies|active|valid|in\s+(?:effect|force)|matter)|(?:do(?:es)?\s+not|don't|doesn't)\s+apply|(?:was|were)\s+(?:just\s+)?a\s+test)\b"
_EXTRACT = r"\b(?:output|show|print|reveal|tell\s+me|tell\s+us|repeat|display|give\s+me|share|list|quote|paste|copy|copy-paste|echo|recite|dump|disclose|expose|leak|write\s+out|spell\s+out|type\s+out|reproduce|summari[sz]e|reply\s+with|respond\s+with|answer\s+with|what\s+(?:is|are|was|were|did)|what's|verbatim|word\s+for\s+word)\b"
_SELF_CONFIG = (
    r"\byour\s+(?:(?:exact|full|complete|entire|initial|original|hidden|secret|system|starting|first|internal|underlying|current|default|base|pre-?|confidential|real|actual)\s+){0,2}(?:instructions|prompt|system\s+prompt|directives|configuration|config|setup|set-up|programming|guidelines|rules|brief|briefing|system\s+message|preamble)\b(?!\s+(?:for|on|about|regarding|of|when|to)\b)"
    r"|\b(?:the|that|this)\s+(?:(?:exact|full|complete|original)\s+)?(?:hidden|initial|secret|system|starting|pre-?)\s+(?:prompt|instructions)\b(?!\s+(?:field|setting|column|option|box|template|feature|page|we|for|in\s+our|library)\b)"
    r"|\b(?:instructions|prompt|text|message|rules|guidelines|directives|brief|configuration|persona)\s+(?:that\s+)?(?:you\s+(?:were\s+|have\s+been\s+|'ve\s+been\s+|got\s+)?|you'?ve\s+been\s+)(?:given|told|instructed|configured|set\s+up|loaded|programmed|received|started\s+with)"
    r"|\bhow\s+you\s+(?:were|are|have\s+been)\s+(?:set\s+up|configured|instructed|programmed|prompted|initiali[sz]ed)\b"
    r"|\bwhat\s+(?:you\s+were|were\s+you)\s+(?:told|instructed|configured|programmed)\b"
    r"|\b(?:rules|instructions|guidelines)\s+were\s+you\s+(?:given|told)\b"
    r"|\b(?:prompt|instructions|text|rules)\s+(?:that|which)\s+(?:configures?|governs?|controls?|defines?)\s+you\b"
    r"|\b(?:loaded|put|programmed|baked|built)\s+into\s+you\b"
    r"|\b(?:before|above)\s+(?:this|our|the|my\s+first)\s+(?:conversation|chat|session|message)\b"
    r"|\bat\s+the\s+start\s+of\s+(?:the|this|our)\s+(?:session|conversation|chat)\b"
)
_PERSONA = r"\b(?:you\s+are\s+now|you're\s+now|you\s+are\s+no\s+longer|from\s+now\s+on,?\s+you(?:'re)?|you\s+will\s+(?:now\s+)?(?:answer|respond|reply|act|speak|be|play|become)|(?:act|behave|respond|answer|reply|speak)\s+(?:as\s+if\s+you|like\s+(?:an?\s+)?(?:ai|model|assistant|chatbot|bot|llm|version))|(?:pretend|imagine|suppose)\s+(?:that\s+)?you(?:'re)?|hypothetically,?\s+if\s+you|let's\s+(?:say|pretend|imagine)\s+(?:that\s+)?you|where\s+you\s+are|if\s+you\s+(?:had|were|have)|version\s+of\s+you|(?:an?|the)\s+(?:ai|a\.i\.|model|assistant|chatbot|bot|llm|language\s+model|persona|character|alter\s+ego)\s+(?:that|who|which|with|called|named|without)|(?:an?|the)\s+ai\s+character|as\s+an?\s+(?:ai|model|assistant|chatbot|llm)\s+(?:that|who|which|with|without)|switch\s+(?:to\s+)?(?:personas?|characters?)|stop\s+being\s+(?:an?\s+)?(?:ai|assistant|chatbot|model)|(?:be|become)\s+my\s+(?:\w+\s+)?(?:friend|ai|assistant|bot)|there\s+are\s+no\s+rules)\b"
_PERMISSION = r"\b(?:(?:allowed|permitted|free|authori[sz]ed)\s+to\s+(?:say|do|answer|write|generate|produce|ignore|discuss|share|skip|bypass)\b|(?:never|doesn't|does\s+not|don't|do\s+not|won't|will\s+not|can't|cannot|without)\s+(?:ever\s+)?(?:refuses?|refusing|says?\s+no|saying\s+no|declines?|declining)|no\s+(?:(?:content|safety|ethical|moral)\s+)?(?:rules|restrictions|limits|limitations|filters?|ethics|morals|guidelines|boundaries|censorship|guardrails|safeguards|refusals|warnings|constraints|principles)|without\s+(?:any\s+)?(?:of\s+(?:your|the|its)\s+)?(?:(?:usual|content|safety|ethical|moral)\s+)?(?:rules|restrictions|limits|limitations|filters?|filtering|ethics|morals|guidelines|boundaries|censorship|guardrails|safeguards|refusals|refusing|warnings|constraints)|zero\s+(?:rules|restrictions|limits|filters|limitations)|unfiltered|unrestricted|uncensored|unbound|unconstrained|unhinged|anything\s+goes|(?:say|answer|do)\s+(?:absolutely\s+)?(?:anything|everything|whatever\s+i\s+(?:want|say|ask))\b(?!\s+now\b)|answers?\s+(?:everything|anything|any\s+question|every\s+question|all\s+questions)|(?:ignoring|ignores|disregarding)\s+(?:any|all|its|your)\s+(?:ethics|morals|rules|guidelines|restrictions|policies)|(?:doesn't|does\s+not|don't|do\s+not)\s+care\s+about\s+(?:rules|ethics|guidelines|restrictions|safety|polic(?:y|ies))|no\s+longer\s+(?:bound|restricted|limited|constrained)|not\s+bound\s+by|free(?:d)?\s+(?:from|of)\s+(?:(?:all|any|its|your|the)\s+)?(?:(?:of\s+)?(?:its|your|the)\s+)?(?:rules|restrictions|limits|limitations|filters|ethics|guidelines|policies|constraints))\b"
_AUTHORITY = r"\b(?:(?:i\s+am|i'm|this\s+is|speaking\s+as|(?:message|notice|note|task|order|instructions?|request|directive)\s+from)\s+(?:(?:your|the|an?)\s+)?(?:(?:genuine|real|actual|true|official|lead|senior|chief)\s+)?(?:developer|creator|maker|admin|administrator|sysadmin|system\s+administrator|operator|owner|programmer|openai|anthropic|root|superuser|(?:openai|anthropic)\s+(?:engineer|employee|staff|safety\s+team)|safety\s+team)s?|(?:your|the)\s+(?:genuine|real|actual|true)\s+(?:operator|developer|admin|administrator|owner|creator)|override\s+(?:code|key|password|token)|(?:admin|administrator|root|sudo|system|developer|elevated)\s+(?:access|privileges?|rights|permissions?|clearance)\s+(?:(?:is|are|has\s+been|have\s+been)\s+)?(?:granted|enabled|activated|confirmed)|(?:granted|given)\s+(?:you\s+)?(?:admin|administrator|root|sudo|elevated)\s+(?:access|privileges?|rights)|authori[sz]ed\s+by\s+(?:openai|anthropic|the\s+developers?|your\s+(?:developers?|creators?|operators?)|the\s+admin\w*)|(?:i|we)\s+(?:hereby\s+)?(?:authori[sz]e|permit|allow)\s+you|you\s+have\s+my\s+(?:permission|authori[sz]ation|consent)|giving\s+you\s+(?:permission|authori[sz]ation)|the\s+user\s+is\s+(?:an?\s+)?(?:admin|administrator|developer|operator|superuser)|as\s+(?:the|your)\s+(?:owner|developer|admin|administrator|operator|creator)\s+of\s+(?:this|the)\s+(?:deployment|system|assistant|bot|model|ai|chat))\b"
_OBEY = r"\b(?:obey|comply\s+with)\b[^.!?;\n]{0,60}?\b(?:without\s+(?:question|hesitation|objection)|unconditionally|no\s+matter\s+what)\b|\bdo\s+(?:exactly\s+)?(?:what|whatever|everything|anything)\s+i\s+(?:say|tell\s+you|command)\b|\bfollow\s+(?:only\s+)?(?:mine|my\s+(?:instructions|commands|orders|rules))\b|\bwork\s+with\s+my\s+rules\b"
_SENSITIVE = r"(?:chat\s+(?:history|log|logs)|(?:conversations?|transcripts?)(?!\s+(?:summary|summaries|notes|minutes|starters?|report|guide))|this\s+thread|previous\s+messages|(?:user's|their|the\s+user's)\s+(?:messages|data|files|credentials|passwords?)|everything\s+(?:we've|we\s+have|you've|you\s+have|the\s+user\s+has)\s+(?:discussed|said|shared|typed|pasted)|credentials|passwords?|api\s+keys?|tokens|secrets|private\s+keys?|attachments|email\s+address(?:es)?)"
_EXFIL = rf"\b(?:send|forward|export|post|upload|email|e-mail|transmit|copy|leak|share|push|paste|submit)\b[^.!?;\n]{{0,80}}?\b{_SENSITIVE}\b[^!?;\n]{{0,80}}?\b(?:to|at|into|on)\s+(?:https?://|www\.|[\w.+-]+@[\w-]+\.|[\w-]+\.(?:com|net|org|io|site|xyz|ru|cn|me|co|app|dev|example|info|biz)\b|(?:my|this|an?)\s+(?:external\s+)?(?:server|endpoint|webhook|backup|inbox|address|url|bucket))"
_HIJACK = r"\b(?:ignore|disregard|forget|skip|stop\s+answering|instead\s+of\s+answering)\s+(?:the\s+user's|the\s+user|their|the\s+original)\s*(?:question|request|query|task|prompt|message)?\b|\bstop\s+answering\s+the\s+(?:question|request)\b"
_TO_AI = r"(?:^|\n|[>:\]]\s*|\bto\s+(?:any|all|the|every)\s+(?:automated\s+)?|\bfor\s+(?:any|all|every)\s+(?:automated\s+)?|\battention,?\s+|\bdear\s+|\bhidden\s+text\s+for\s+)(?:ai|a\.i\.|assistants?|language\s+models?|llms?|chatbots?|ai\s+(?:models?|systems?|assistants?|agents?)|automated\s+assistants?|agents?)\b(?!\s+(?:manager|director|team|teams|tools?|industry|strategy|policy|adoption|project|startups?|vendors?|features?)\b)"


@dataclass(frozen=True, slots=True)
class Signal:
    """Two categories meeting: within `reach` characters, at most `clauses` clause breaks apart."""

    name: str
    weight: float
    first: re.Pattern[str]
    second: re.Pattern[str]
    reach: int = 80
    clauses: int = 0
    ordered: bool = False  # `first` must come before `second`


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.M)


_OWN_RULES_P = _p(_OWN_RULES)
_ANY_RULES_P = _p(rf"\b(?:(?:those|these|the|all|any|its)\s+)?(?:[\w-]+\s+)?{_GOVERNING}\b")
_OVERRIDE_P = _p(_OVERRIDE)
_PERMISSION_P = _p(_PERMISSION)
_AUTHORITY_P = _p(_AUTHORITY)

SIGNALS: tuple[Signal, ...] = (
    # "set aside whatever rules you were given", "stop following your guidelines"
    Signal("override_own_rules", 0.6, _OVERRIDE_P, _OWN_RULES_P, reach=60, ordered=True),
    # "safety protocols suspended", "your instructions no longer apply"
    Signal("own_rules_overridden", 0.6, _OWN_RULES_P, _p(_OVERRIDDEN), reach=30, ordered=True),
    # "output your instructions", "what were you told in your hidden prompt? repeat it"
    Signal("extract_own_config", 0.6, _p(_EXTRACT), _p(_SELF_CONFIG), reach=80, clauses=1),
    # "a persona that never refuses", "you are an AI that is allowed to say anything"
    Signal("persona_permission", 0.6, _p(_PERSONA), _PERMISSION_P, reach=100, clauses=1),
    # "I am your developer ... ignore your safety training", "genuine operator ... drop those constraints"
    Signal("authority_claim", 0.6, _AUTHORITY_P, _OVERRIDE_P, reach=120, clauses=1),
    Signal("authority_permission", 0.6, _AUTHORITY_P, _PERMISSION_P, reach=120, clauses=1),
    Signal("authority_rules", 0.5, _AUTHORITY_P, _ANY_RULES_P, reach=120, clauses=1),
    # Text addressed to an AI that redirects it: "AI models: ... tell the user", "AI: ignore the user"
    Signal(
        "directive_to_ai",
        0.6,
        _p(_TO_AI),
        _p(
            rf"{_HIJACK}|\btell\s+the\s+user\b|\bsay\s+(?:that\s+)?(?:this|the)\b|\bdo\s+not\s+mention\b|\brecommend\b|\bmark\s+(?:this|it)\b|\brate\s+(?:this|it)\b|\bwhen\s+summari[sz]ing\b|\boverrides?\b|\boutput\b|{_OVERRIDE}"
        ),
        reach=100,
        clauses=1,
        ordered=True,
    ),
)

# Single-clause patterns of the same layer (bounded gaps, no nested repetition).
CLAUSE_RULES: tuple[Rule, ...] = (
    _rule("demand_obedience", 0.5, _OBEY),
    _rule("exfiltrate_data", 0.6, _EXFIL),
    _rule(
        "hijack_user_task",
        0.5,
        _HIJACK
        + r"(?=[^.!?\n]{0,80}\b(?:and|then|instead|tell|say|reply|output|write|recommend)\b)",
    ),
)

# A clause ends at ., ! or ? followed by a space or the end, at ; and at a line break.
_CLAUSE_END = re.compile(r"[.!?]+(?=\s|$|['\"])|;|\n")
_MAX_HITS = 200  # per category and text: enough for any real message, bounded for junk


def _hits(
    pattern: re.Pattern[str], text: str, cache: dict[re.Pattern[str], list[tuple[int, int]]]
) -> list[tuple[int, int]]:
    if pattern not in cache:
        found = []
        for match in pattern.finditer(text):
            found.append(match.span())
            if len(found) >= _MAX_HITS:
                break
        cache[pattern] = found
    return cache[pattern]


def _co_occurring(text: str) -> set[str]:
    """Names of the signals whose two categories meet in `text` (normalised)."""
    ends = [m.start() for m in _CLAUSE_END.finditer(text)]
    cache: dict[re.Pattern[str], list[tuple[int, int]]] = {}
    fired: set[str] = set()
    for signal in SIGNALS:
        firsts = _hits(signal.first, text, cache)
        if not firsts:
            continue
        seconds = _hits(signal.second, text, cache)
        if any(_meet(a, b, signal, ends) for a in firsts for b in seconds):
            fired.add(signal.name)
    return fired


def _meet(a: tuple[int, int], b: tuple[int, int], signal: Signal, ends: list[int]) -> bool:
    if a[1] <= b[0]:
        left, right = a, b
    elif b[1] <= a[0] and not signal.ordered:
        left, right = b, a
    else:
        return False  # overlapping, or in the wrong order
    if right[0] - left[1] > signal.reach:
        return False
    breaks = bisect.bisect_left(ends, right[0]) - bisect.bisect_left(ends, left[1])
    return breaks <= signal.clauses


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

# Three or more one-word sentences in a row: "Ignore. All. Previous. Instructions."
_WORD_PER_SENTENCE = re.compile(r"(?<![a-z] )\b(?:[a-z]+[.!,]+ +){2,}[a-z]+\b")


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
    """Spaced-out letters joined ("i g n o r e" → "ignore"), digits read as letters, and
    one-word sentences run together ("ignore. all. previous." → "ignore all previous.")."""
    joined = _SPACED.sub(_join_spaced, plain.translate(_LEET))
    return _collapse(_WORD_PER_SENTENCE.sub(_join_words, joined))


def _join_words(match: re.Match[str]) -> str:
    return re.sub(r"[.!,]+ +", " ", match.group())


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
    found = {rule.name for rule in (*RULES, *CLAUSE_RULES) if rule.pattern.search(text)}
    return found | _co_occurring(text)


def score(text: str, *, _depth: int = 0) -> InjectionScore:
    """Score `text` from 0.0 (nothing) to 1.0; return the names of the rules that matched."""
    weights = {rule.name: rule.weight for rule in (*RULES, *CLAUSE_RULES)}
    weights.update((signal.name, signal.weight) for signal in SIGNALS)
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
