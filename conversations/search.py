"""Search over a person's own conversations, without ever putting their words in SQL.

Titles and messages are encrypted at rest (docs/data-protection.md), so the database cannot
match their text. Instead each message and each title gets a *blind index*
(`SearchDocument.tokens`): its words, normalised here (NFKC, case-folded, split into words,
one-character words dropped), each replaced by a keyed token — HMAC-SHA256 under the search
key, truncated to 96 bits and written in the letters a–p — so the database holds no word,
only which rows share a word. A query is normalised and tokenised the same way; matching is
equality of tokens:

* PostgreSQL: `search_vector` (a tsvector generated from the tokens, 'simple' configuration,
  GIN index; migration 0012) `@@ plainto_tsquery('simple', tokens)`, ranked with `ts_rank`;
* elsewhere (the embedded SQLite): `tokens LIKE '% token %'` per word.

Every word of a query must be in the same message (or the title). The search key is a data
key (purpose `search`, period `standing`) wrapped by the master key like every other: a
master-key rotation re-wraps it and the tokens stay valid, no reindex. Re-encrypting the
transcripts (`rotate_encryption_keys --reencrypt`) leaves it alone.

Writers call `index_message` / `index_title` wherever text is stored, and `forget_*` where it
is erased; `rebuild` (manage.py rebuild_search_index) indexes what exists.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, F, FloatField, QuerySet, Value
from django.db.models.expressions import RawSQL

from accounts.models import User
from conversations.errors import ChatError
from conversations.models import Conversation, Message, SearchDocument
from protection import datakeys
from protection.fields import unreadable_code

WORD_MIN_CHARS = 2
WORD_MAX_CHARS = 64  # longer words are cut (the query's the same way), so they still match
QUERY_MAX_CHARS = 200
QUERY_MAX_WORDS = 16
RESULTS_MAX = 50
SNIPPET_CHARS = 160
_TOKEN_BYTES = 12
_TOKEN_LABEL = b"enterprise-ai/search-token/v1\x00"
# Hex digits as letters: a token is one plain "word" to PostgreSQL's text-search parser
# (never a number, a float or a host name it would split or rewrite).
_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
_WORD = re.compile(r"\w+")


# --- words and tokens ----------------------------------------------------------------------


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def words_of(text: str) -> list[str]:
    """The searchable words of `text`, in order: NFKC, case-folded, split on anything that is
    not a letter, digit or underscore; one-character words dropped; long words cut."""
    return [w[:WORD_MAX_CHARS] for w in _WORD.findall(_fold(text)) if len(w) >= WORD_MIN_CHARS]


def search_key() -> bytes:
    """The plaintext search key (made on first use, wrapped by the master key). Raises
    KeyUnavailableError like any data key."""
    return datakeys.key_for_writing(datakeys.SEARCH, datakeys.STANDING)[1]


def token(word: str, key: bytes) -> str:
    """The blind token of one normalised word: 24 letters a–p (96 bits of HMAC-SHA256)."""
    digest = hmac.new(key, _TOKEN_LABEL + word.encode("utf-8"), hashlib.sha256).digest()
    return digest[:_TOKEN_BYTES].hex().translate(_LETTERS)


def tokens_of(text: str, key: bytes | None = None) -> list[str]:
    """The distinct tokens of `text`'s words, sorted (no order or count of words leaks)."""
    key = key if key is not None else search_key()
    return sorted({token(word, key) for word in words_of(text)})


def _column(tokens: Iterable[str]) -> str:
    joined = " ".join(tokens)
    return f" {joined} " if joined else ""


# --- writing -------------------------------------------------------------------------------


def _indexable(text: object) -> str:
    """The text to index, or "" (empty, or stored encrypted but unreadable)."""
    if not isinstance(text, str) or unreadable_code(text):
        return ""
    return text


def index_message(message: Message) -> None:
    """(Re)index one message's text: call wherever a message's content is stored."""
    text = _indexable(message.content)
    tokens = tokens_of(text) if text else []
    if not tokens:
        SearchDocument.objects.filter(message_id=message.pk).delete()
        return
    if Message._meta.get_field("conversation").is_cached(message):
        owner_id = message.conversation.owner_id
    else:
        owner_id = Conversation.objects.values_list("owner_id", flat=True).get(
            pk=message.conversation_id
        )
    SearchDocument.objects.update_or_create(
        message_id=message.pk,
        defaults={
            "owner_id": owner_id,
            "conversation_id": message.conversation_id,
            "tokens": _column(tokens),
        },
    )


def index_title(conversation: Conversation) -> None:
    """(Re)index a conversation's title: call wherever a title is set."""
    text = _indexable(conversation.title)
    tokens = tokens_of(text) if text else []
    existing = SearchDocument.objects.filter(conversation_id=conversation.pk, message__isnull=True)
    if not tokens:
        existing.delete()
        return
    if not existing.update(tokens=_column(tokens)):
        SearchDocument.objects.create(
            owner_id=conversation.owner_id,
            conversation_id=conversation.pk,
            message=None,
            tokens=_column(tokens),
        )


def forget_conversations(conversation_ids: Iterable[int]) -> int:
    """Drop the index of conversations whose content is erased (or hidden from their owner)."""
    return SearchDocument.objects.filter(conversation_id__in=list(conversation_ids)).delete()[0]


def forget_person(person_id: int) -> int:
    """Drop the index of every conversation a person owns (their erasure)."""
    return SearchDocument.objects.filter(owner_id=person_id).delete()[0]


@dataclass
class RebuildReport:
    messages: int = 0
    titles: int = 0
    removed: int = 0


def rebuild(
    *, batch_size: int = 500, progress: Callable[[str], Any] | None = None
) -> RebuildReport:
    """Index every stored message and title of conversations not deleted, in batches (each
    its own transaction), and drop the index of deleted ones. Idempotent."""
    report = RebuildReport()
    key = search_key()
    report.removed = SearchDocument.objects.filter(conversation__deleted_at__isnull=False).delete()[
        0
    ]
    last = 0
    live = Message.objects.filter(conversation__deleted_at__isnull=True).exclude(content="")
    while True:
        batch = list(
            live.filter(pk__gt=last)
            .only("pk", "content", "conversation_id")
            .order_by("pk")[:batch_size]
        )
        if not batch:
            break
        last = batch[-1].pk
        owners = dict(
            Conversation.objects.filter(pk__in={m.conversation_id for m in batch}).values_list(
                "pk", "owner_id"
            )
        )
        rows = []
        for message in batch:
            text = _indexable(message.content)
            tokens = tokens_of(text, key) if text else []
            if tokens:
                rows.append(
                    SearchDocument(
                        owner_id=owners[message.conversation_id],
                        conversation_id=message.conversation_id,
                        message_id=message.pk,
                        tokens=_column(tokens),
                    )
                )
        with transaction.atomic():
            SearchDocument.objects.filter(message_id__in=[m.pk for m in batch]).delete()
            SearchDocument.objects.bulk_create(rows)
        report.messages += len(rows)
        if progress:
            progress(f"messages: {report.messages}")
    last = 0
    conversations = Conversation.objects.filter(deleted_at__isnull=True).exclude(title="")
    while True:
        chunk = list(
            conversations.filter(pk__gt=last)
            .only("pk", "owner_id", "title")
            .order_by("pk")[:batch_size]
        )
        if not chunk:
            break
        last = chunk[-1].pk
        with transaction.atomic():
            for conversation in chunk:
                index_title(conversation)
        report.titles += len(chunk)
        if progress:
            progress(f"titles: {report.titles}")
    return report


# --- searching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    conversation: str  # public id
    title: str
    snippet: str  # "" when only the title matched
    updated_at: datetime
    message: str | None  # public id of the message the snippet is from


def query_words(query: object) -> list[str]:
    """A query's distinct words (at most QUERY_MAX_WORDS). Raises ChatError: invalid (not
    text, or no word of two characters or more), too_large (over QUERY_MAX_CHARS)."""
    if not isinstance(query, str):
        raise ChatError("invalid", "The search must be text.")
    if len(query) > QUERY_MAX_CHARS:
        raise ChatError("too_large", f"A search has at most {QUERY_MAX_CHARS} characters.")
    words = list(dict.fromkeys(words_of(query)))[:QUERY_MAX_WORDS]
    if not words:
        raise ChatError("invalid", "Search for at least one word of two characters or more.")
    return words


def _matching(user: User, tokens: list[str]) -> QuerySet[SearchDocument]:
    docs = SearchDocument.objects.filter(
        owner=user,
        conversation__owner=user,
        conversation__deleted_at__isnull=True,
        conversation__source=Conversation.Source.WEB,
    )
    if connection.vendor == "postgresql":
        # Unqualified: the only `search_vector` in any join, and right under a subquery's alias.
        terms = " ".join(tokens)
        return docs.filter(
            RawSQL(
                "search_vector @@ plainto_tsquery('simple', %s)",
                [terms],
                output_field=BooleanField(),
            )
        ).annotate(
            rank=RawSQL(
                "ts_rank(search_vector, plainto_tsquery('simple', %s))",
                [terms],
                output_field=FloatField(),
            )
        )
    for one in tokens:
        docs = docs.filter(tokens__contains=f" {one} ")
    return docs.annotate(rank=Value(0.0, output_field=FloatField()))


def snippet(text: str, words: Iterable[str], width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` around the first of `words` (plain text, one line)."""
    wanted = set(words)
    text = " ".join(text.split())
    at = 0
    for found in _WORD.finditer(text):
        if wanted.intersection(words_of(found.group())):
            at = found.start()
            break
    start = max(0, at - width // 3)
    if start:
        space = text.rfind(" ", 0, start)
        start = space + 1 if space != -1 and start - space < 20 else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + width // 2 else end
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def conversation_search(*, user: User, query: object, limit: int = RESULTS_MAX) -> list[SearchHit]:
    """The user's own conversations (chat ones, not deleted) whose title or one of whose
    messages holds every word of `query`; most recently active first, at most `limit`, each
    with a snippet of the best-matching message (decrypted here, never in SQL).

    Raises ChatError as `query_words` does.
    """
    words = query_words(query)
    key = search_key()
    tokens = sorted({token(word, key) for word in words})
    docs = _matching(user, tokens)
    conversations = list(
        Conversation.objects.filter(
            pk__in=docs.values("conversation_id"), owner=user, deleted_at__isnull=True
        )
        .only("pk", "public_id", "title", "updated_at")
        .order_by("-updated_at", "-id")[: min(limit, RESULTS_MAX)]
    )
    if not conversations:
        return []
    best: dict[int, int | None] = {}
    rows = (
        docs.filter(conversation_id__in=[c.pk for c in conversations])
        .order_by("conversation_id", F("rank").desc(), "-message_id")
        .values_list("conversation_id", "message_id")
    )
    for conversation_id, message_id in rows[: 20 * len(conversations)]:
        if message_id is not None and best.get(conversation_id) is None:
            best[conversation_id] = message_id
        best.setdefault(conversation_id, message_id)
    messages = {
        m.pk: m
        for m in Message.objects.filter(
            pk__in=[pk for pk in best.values() if pk is not None],
            conversation__owner=user,
        ).only("pk", "public_id", "content", "superseded_by_id")
    }
    hits = []
    for conversation in conversations:
        message = messages.get(best.get(conversation.pk) or 0)
        hits.append(
            SearchHit(
                conversation=str(conversation.public_id),
                title=str(conversation.title),
                snippet=snippet(_indexable(message.content), words) if message else "",
                updated_at=conversation.updated_at,
                # An earlier version (regenerated or edited) is not on the page on its own:
                # the link opens the conversation without pointing at it.
                message=(
                    str(message.public_id)
                    if message is not None and message.superseded_by_id is None
                    else None
                ),
            )
        )
    return hits


def search_rate_limited(user: User) -> int:
    """Seconds to wait when the person searched more than CHAT_SEARCHES_PER_MINUTE times
    this minute, else 0."""
    from enterprise_ai import ratelimit

    limit = settings.CHAT_SEARCHES_PER_MINUTE
    if not limit:
        return 0
    decision = ratelimit.hit(f"chat:search:{user.public_id}", limit=limit, window_seconds=60)
    return 0 if decision.allowed else decision.retry_after
