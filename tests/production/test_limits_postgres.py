"""Per-person send limits on the production path: PostgreSQL and the Redis cache.

Many sends of one person race; the limits must hold exactly, not roughly: the in-flight
limit through the lock on the sender's row, the per-minute limit through Redis INCR.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.core.cache import cache

import conversations.services
from accounts.models import User
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.services import audit_chain_flush
from conversations.errors import ChatError
from conversations.models import Conversation, Message
from conversations.services import SendResult, message_send
from tests.production.test_costs_postgres import run_together
from tests.support import early_in_a_minute

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

SENDERS = 20


@pytest.fixture(autouse=True)
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replies stay pending: no worker finishes them while the sends race."""
    monkeypatch.setattr(conversations.services, "dispatch", lambda *args: None)


def send_demo(user_id: int) -> SendResult:
    """A first message in a new conversation, as the socket consumer sends it."""
    return message_send(
        actor=User.objects.get(pk=user_id),
        text="Status of the quarterly numbers?",
        model_key="demo",
        new_conversation_id=uuid.uuid4(),
    )


def outcome_codes(outcomes: list[Any]) -> tuple[int, set[str]]:
    unexpected = [o for o in outcomes if not isinstance(o, SendResult | ChatError)]
    assert unexpected == []
    accepted = sum(isinstance(o, SendResult) for o in outcomes)
    return accepted, {o.code for o in outcomes if isinstance(o, ChatError)}


def test_concurrent_sends_never_exceed_the_replies_in_flight_limit(owner, settings) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 3

    accepted, codes = outcome_codes(run_together([lambda: send_demo(owner.pk)] * SENDERS))

    assert (accepted, codes) == (3, {"rate_limited"})
    assert Message.objects.filter(role="assistant", status="pending").count() == 3
    assert Message.objects.filter(role="user").count() == 3
    assert Conversation.objects.count() == 3


def test_concurrent_sends_never_exceed_the_per_minute_limit_in_redis(owner, settings) -> None:
    assert "redis" in settings.CACHES["default"]["BACKEND"].lower()
    settings.CHAT_MESSAGES_PER_MINUTE = 5
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 0
    early_in_a_minute(latest_second=40)  # one minute's window for the whole race
    cache.clear()

    accepted, codes = outcome_codes(run_together([lambda: send_demo(owner.pk)] * SENDERS))

    assert (accepted, codes) == (5, {"rate_limited"})
    assert Message.objects.filter(role="user").count() == 5
    audit_chain_flush()  # events committed by the senders' threads, chained just after
    assert AuditEvent.objects.filter(action=AuditAction.MESSAGE_RATE_LIMITED).count() == 1
