"""Regenerate and edit on PostgreSQL: racing requests for a new version of the last turn.

The conversation's row lock and the one-reply-in-flight constraint admit exactly one of
them; the ledger charges the new reply once for its one provider call and leaves the
earlier version's charge as it was; the budget's spend is the ledger's sum.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from accounts.models import User
from conversations.errors import ChatError
from conversations.generation import reply_generate
from conversations.models import Message
from conversations.services import SendResult, message_edit, message_regenerate, message_send
from costs.models import BudgetWindow, CostEntry, Reservation
from tests.production.test_costs_postgres import (  # noqa: F401  (fixtures)
    MODEL,
    budget_for,
    dispatched,
    ledger_total,
    priced_model,
    provider_calls,
    run_together,
)

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

RACERS = 8


def regenerate(user_id: int, conversation_id: Any, reply_id: Any) -> SendResult:
    return message_regenerate(
        actor=User.objects.get(pk=user_id), conversation_id=conversation_id, reply_id=reply_id
    )


def edit(user_id: int, conversation_id: Any, message_id: Any, text: str) -> SendResult:
    return message_edit(
        actor=User.objects.get(pk=user_id),
        conversation_id=conversation_id,
        message_id=message_id,
        text=text,
    )


def test_racing_regenerates_and_edits_admit_one_and_charge_each_call_once(
    owner,
    priced_model,  # noqa: F811
    dispatched,  # noqa: F811
    provider_calls,  # noqa: F811
) -> None:
    budget = budget_for(owner, Decimal("100"))
    first = message_send(actor=owner, text="Plan the quarter", model_key=MODEL)
    reply_generate(reply_id=first.reply.pk)
    first.reply.refresh_from_db()
    old_entries = list(CostEntry.objects.filter(message=first.reply).values_list("pk", "cost"))
    assert len(old_entries) == 1 and first.reply.cost == old_entries[0][1]
    conversation_id = first.conversation.public_id

    racers: list[Callable[[], Any]] = []
    for n in range(RACERS):
        racers.append(partial(regenerate, owner.pk, conversation_id, first.reply.public_id))
        racers.append(
            partial(edit, owner.pk, conversation_id, first.user_message.public_id, f"Plan it {n}")
        )
    results = run_together(racers)

    admitted = [r for r in results if isinstance(r, SendResult)]
    refused = [r for r in results if not isinstance(r, SendResult)]
    assert len(admitted) == 1, results
    assert all(isinstance(r, ChatError) for r in refused), refused
    assert {r.code for r in refused} <= {"busy", "not_last"}
    assert dispatched == [first.reply.pk, admitted[0].reply.pk]
    # Exactly one new reply (plus one new message if the edit won), the old turn kept.
    winner = admitted[0]
    new_messages = 1 if winner.user_message.pk == first.user_message.pk else 2
    assert Message.objects.count() == 2 + new_messages
    assert Message.objects.filter(superseded_by__isnull=True, role="assistant").get() == (
        winner.reply
    )
    assert Reservation.objects.filter(status="held").count() == 1

    reply_generate(reply_id=winner.reply.pk)
    winner.reply.refresh_from_db()
    assert len(provider_calls) == 2  # the first reply's call and the new version's
    assert list(CostEntry.objects.filter(message=first.reply).values_list("pk", "cost")) == (
        old_entries
    )
    new_entries = CostEntry.objects.filter(message=winner.reply)
    assert new_entries.count() == 1 and new_entries.get().cost == winner.reply.cost
    assert CostEntry.objects.count() == 2
    assert BudgetWindow.objects.get(budget=budget).spent == ledger_total()
    assert Reservation.objects.filter(status="held").count() == 0
