"""Budgets on PostgreSQL: concurrent reservations, redelivered settlements, expiry races.

Run by `make test-production`. Replies are not handed to a Celery worker: `dispatch` is
replaced by a recorder, and each test generates (or finishes) the recorded replies itself,
so it knows exactly which provider calls were made. Every thread has its own connection.

The reserve-then-settle design is in costs/services.py; what these tests hold it to:

- no budget is ever overshot, however many sends race for its last reservations;
- a reply is charged once, one ledger row per provider call, however often it is settled;
- a hold is released once, by its settlement or by the expiry job, whichever commits first.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

import conversations.services
import costs.services
from accounts.models import User
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.models import AuditEvent
from audit.services import audit_chain_flush
from conversations.errors import ChatError
from conversations.generation import reply_generate
from conversations.models import Conversation, Message
from conversations.services import (
    ReplyOutcome,
    SendResult,
    message_send,
    reply_claim,
    reply_finish,
)
from conversations.tasks import generate_reply
from costs.models import Budget, BudgetWindow, CostEntry, ModelPrice, Reservation
from costs.services import (
    CallUsage,
    estimate_max,
    ledger_settle,
    reservations_release_expired,
)
from providers.base import ChatMessage
from providers.demo import DemoProvider
from providers.models import AIModel
from providers.registry import model_for_user
from providers.window import message_tokens

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

MODEL = "priced"
TEXT = "What should we put in the quarterly report?"
SENDERS = 50
CALLS_THAT_FIT = 10
INPUT_PRICE = Decimal("3")  # per million tokens
CACHED_PRICE = Decimal("0.3")
OUTPUT_PRICE = Decimal("15")


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def priced_model(fast_demo: None, settings: Any) -> AIModel:
    """A demo-provider model (fast, offline) with a price in force since yesterday.

    The per-person rate limits are off: these tests race one person's sends on purpose
    (tests/production/test_limits_postgres.py holds the limits to account).
    """
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 0
    model = AIModel.objects.create(
        key=MODEL,
        display_name="Priced demo",
        provider="demo",
        provider_model_id="demo-priced",
        available_to_everyone=True,
        context_window=8192,
        max_output_tokens=1000,
    )
    ModelPrice.objects.create(
        model=model,
        input_per_million=INPUT_PRICE,
        cached_input_per_million=CACHED_PRICE,
        output_per_million=OUTPUT_PRICE,
        effective_from=timezone.now() - timedelta(days=1),
    )
    return model


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The reply ids that sends hand to the background, in commit order (no worker runs)."""
    ids: list[int] = []
    lock = threading.Lock()

    def record(task: Any, *args: Any) -> None:
        assert task is generate_reply
        with lock:
            ids.append(args[0])

    monkeypatch.setattr(conversations.services, "dispatch", record)
    return ids


@pytest.fixture
def provider_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model key of every request that reached the (demo) provider."""
    calls: list[str] = []
    lock = threading.Lock()
    stream = DemoProvider.stream

    def counted(self: DemoProvider, request: Any) -> Any:
        with lock:
            calls.append(self.spec.key)
        return stream(self, request)

    monkeypatch.setattr(DemoProvider, "stream", counted)
    return calls


# --- Helpers -----------------------------------------------------------------------------------


def budget_for(user: Any, limit: Decimal, name: str = "Personal") -> Budget:
    return Budget.objects.create(
        name=name,
        scope=Budget.Scope.USER,
        user=user,
        period=Budget.Period.MONTHLY,
        limit_amount=limit,
        action=Budget.Action.BLOCK,
    )


def organisation_budget(limit: Decimal) -> Budget:
    return Budget.objects.create(
        name="Organisation",
        scope=Budget.Scope.ORGANISATION,
        period=Budget.Period.MONTHLY,
        limit_amount=limit,
        action=Budget.Action.BLOCK,
    )


def window_of(budget: Budget) -> BudgetWindow:
    return BudgetWindow.objects.get(budget=budget)


def send(user_id: int, text: str = TEXT) -> SendResult:
    """A first message in a new conversation, as the socket consumer sends it."""
    actor = User.objects.get(pk=user_id)
    return message_send(actor=actor, text=text, model_key=MODEL, new_conversation_id=uuid.uuid4())


def first_turn_input_tokens(text: str) -> int:
    """What the send estimates a new conversation's first call to read: the system prompt,
    the message and the (still empty) pending reply."""
    return sum(
        message_tokens(m)
        for m in (
            ChatMessage("user", settings.CHAT_SYSTEM_PROMPT),
            ChatMessage("user", text),
            ChatMessage("assistant", ""),
        )
    )


def ledger_total(**filters: Any) -> Decimal:
    return sum((e.cost for e in CostEntry.objects.filter(**filters)), start=Decimal(0))


def run_together(functions: list[Callable[[], Any]], timeout: float = 120) -> list[Any]:
    """Run each function on its own thread (and connection), released together by a barrier.

    Returns each one's result, or the exception it raised, in order.
    """
    barrier = threading.Barrier(len(functions))
    results: list[Any] = [None] * len(functions)

    def run(index: int, function: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = function()
        except BaseException as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(i, f), daemon=True) for i, f in enumerate(functions)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread is still running"
    return results


class Background(threading.Thread):
    """One function on a thread of its own (and its own connection); keeps what it returned
    or raised."""

    def __init__(self, function: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.function = function
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()

    def finish(self, timeout: float = 60) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} is still running"
        if self.error is not None:
            raise AssertionError(f"{self.name} failed: {self.error!r}") from self.error
        return self.result


def lock_waiters() -> int:
    """Sessions of this database waiting for a lock (a row lock, here)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@contextmanager
def window_locked(window_id: int) -> Iterator[None]:
    """Another session holds the window row's lock until the block ends, as a concurrent
    reservation would."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            BudgetWindow.objects.select_for_update().get(pk=window_id)
            locked.set()
            release.wait(60)

    holder = Background(hold, "lock holder")
    holder.start()
    assert locked.wait(30), "could not lock the window"
    try:
        yield
    finally:
        release.set()
        holder.finish()


def finished_outcome(calls: list[CallUsage]) -> ReplyOutcome:
    return ReplyOutcome(
        status=Message.Status.COMPLETE,
        content="Done.",
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        stop_reason="end_turn",
        answered_by=MODEL,
        calls=calls,
    )


def just_after(moment: datetime) -> datetime:
    return moment + timedelta(microseconds=1)


# --- No overshoot under concurrency ------------------------------------------------------------


def test_fifty_concurrent_sends_never_overshoot_a_budget_that_fits_ten(
    owner, colleague, priced_model, dispatched, provider_calls
) -> None:
    # What one send holds: probed with a send of the same text by someone else, and
    # computed as the service does.
    budget_for(colleague, Decimal(1000), name="Probe")
    probe = send(colleague.pk)
    per_call = Reservation.objects.get(message=probe.reply).amount
    expected = estimate_max(
        model=model_for_user(MODEL, owner),
        input_tokens=first_turn_input_tokens(TEXT),
        when=timezone.now(),
    )
    assert per_call == expected.amount > 0
    dispatched.clear()  # the probe is never generated

    limit = per_call * CALLS_THAT_FIT
    personal = budget_for(owner, limit)
    organisation = organisation_budget(Decimal(1000))  # locked second by every accepted send

    outcomes = run_together([lambda: send(owner.pk)] * SENDERS)

    unexpected = [o for o in outcomes if not isinstance(o, SendResult | ChatError)]
    assert unexpected == []
    accepted = [o for o in outcomes if isinstance(o, SendResult)]
    refused = [o for o in outcomes if isinstance(o, ChatError)]
    assert (len(accepted), len(refused)) == (CALLS_THAT_FIT, SENDERS - CALLS_THAT_FIT)
    assert {e.code for e in refused} == {"budget_exceeded"}
    assert all("Personal budget" in e.reason for e in refused)

    # Exactly the limit is held, by the ten accepted replies; nothing of a refusal is stored.
    window = window_of(personal)
    assert (window.spent, window.reserved) == (0, limit)
    assert window.reserved_tokens == CALLS_THAT_FIT * expected.tokens
    assert window_of(organisation).reserved == limit
    replies = {r.reply.pk for r in accepted}
    held = Reservation.objects.filter(window=window, status=Reservation.Status.HELD)
    assert set(held.values_list("message_id", flat=True)) == replies
    assert Conversation.objects.filter(owner=owner).count() == CALLS_THAT_FIT
    assert Message.objects.filter(conversation__owner=owner).count() == 2 * CALLS_THAT_FIT
    assert sorted(dispatched) == sorted(replies)

    audit_chain_flush()  # events committed by the senders' threads, chained just after
    refusals = AuditEvent.objects.filter(action=AuditAction.BUDGET_REFUSED)
    assert refusals.count() == SENDERS - CALLS_THAT_FIT
    assert set(refusals.values_list("actor_id", "target_type", "target_id", "outcome")) == {
        (owner.pk, TargetType.BUDGET, str(personal.pk), AuditOutcome.DENIED)
    }
    assert AuditEvent.objects.filter(action=AuditAction.MESSAGE_SENT, actor=owner).count() == (
        CALLS_THAT_FIT
    )

    # The accepted replies are generated (concurrently too) and settle their holds.
    finished = run_together([partial(reply_generate, reply_id=rid) for rid in replies])
    assert finished == [None] * CALLS_THAT_FIT
    assert len(provider_calls) == CALLS_THAT_FIT
    assert CostEntry.objects.filter(user=owner).count() == CALLS_THAT_FIT
    statuses = Message.objects.filter(pk__in=replies).values_list("status", flat=True)
    assert set(statuses) == {Message.Status.COMPLETE}

    spent = ledger_total(user=owner)
    window.refresh_from_db()
    assert (window.reserved, window.reserved_tokens) == (0, 0)
    assert 0 < window.spent == spent <= limit
    assert window.spent_tokens == sum(
        e.input_tokens + e.output_tokens for e in CostEntry.objects.filter(user=owner)
    )
    org_window = window_of(organisation)
    assert (org_window.spent, org_window.reserved, org_window.reserved_tokens) == (spent, 0, 0)
    assert not held.exists()

    # What the settlements freed is exactly what the next wave may hold: no more, no less.
    room = int((limit - spent) // per_call)
    assert 0 < room < SENDERS
    second = run_together([lambda: send(owner.pk)] * SENDERS)
    assert sum(isinstance(o, SendResult) for o in second) == room
    assert sum(isinstance(o, ChatError) and o.code == "budget_exceeded" for o in second) == (
        SENDERS - room
    )
    window.refresh_from_db()
    assert window.spent + window.reserved <= limit
    assert window.reserved == room * per_call
    assert len(provider_calls) == CALLS_THAT_FIT  # sends alone reach no provider


# --- Redelivery --------------------------------------------------------------------------------


def test_a_reply_task_delivered_three_times_is_generated_and_charged_once(
    owner, priced_model, dispatched, provider_calls
) -> None:
    personal = budget_for(owner, Decimal(10))
    sent = send(owner.pk)
    (reply_id,) = dispatched
    held = Reservation.objects.get(message=sent.reply)

    # Two deliveries at once, then a late third.
    assert run_together([lambda: reply_generate(reply_id=reply_id)] * 2) == [None, None]
    reply_generate(reply_id=reply_id)

    assert provider_calls == [MODEL]
    reply = Message.objects.select_related("conversation__owner").get(pk=reply_id)
    entry = CostEntry.objects.get(message=reply)  # one provider call: one row
    assert reply.status == Message.Status.COMPLETE
    assert (entry.call_index, entry.idempotency_key) == (0, f"{reply.public_id}:0")
    assert entry.input_tokens > 0 and entry.output_tokens > 0
    assert reply.cost is not None
    assert entry.cost == reply.cost > 0 and entry.cost < held.amount
    window = window_of(personal)
    charged = (window.spent, window.spent_tokens, window.reserved, window.reserved_tokens)
    assert charged == (entry.cost, entry.input_tokens + entry.output_tokens, 0, 0)

    # Its settlement delivered again (the task's transaction retried): nothing changes.
    calls = [
        CallUsage(
            model=entry.model,
            provider=entry.provider,
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
        )
    ]
    for _ in range(2):
        with transaction.atomic():
            again = ledger_settle(reply=reply, calls=calls, outcome=reply.status)
        assert again.warnings == []
    assert CostEntry.objects.filter(message=reply).count() == 1
    window.refresh_from_db()
    assert (window.spent, window.spent_tokens, window.reserved, window.reserved_tokens) == charged
    held.refresh_from_db()
    assert held.status == Reservation.Status.SETTLED


def test_each_provider_call_is_one_ledger_row_and_a_second_settlement_adds_none(
    owner, priced_model, dispatched
) -> None:
    personal = budget_for(owner, Decimal(10))
    organisation = organisation_budget(Decimal(100))
    sent = send(owner.pk)
    reply = reply_claim(reply_id=sent.reply.pk)
    assert reply is not None
    calls = [  # a tool round: two calls, the second partly from the prompt cache
        CallUsage(model=MODEL, provider="demo", input_tokens=1200, output_tokens=300),
        CallUsage(
            model=MODEL,
            provider="demo",
            input_tokens=1600,
            output_tokens=200,
            cached_input_tokens=1000,
        ),
    ]
    outcome = finished_outcome(calls)

    assert reply_finish(reply=reply, outcome=outcome) is True
    assert reply_finish(reply=reply, outcome=outcome) is False  # a redelivered finish
    with transaction.atomic():
        ledger_settle(reply=reply, calls=calls, outcome=Message.Status.COMPLETE)

    # (1200×3 + 300×15) / 1e6 and (600×3 + 1000×0.3 + 200×15) / 1e6
    expected = [Decimal("0.008100"), Decimal("0.005100")]
    entries = CostEntry.objects.filter(message=reply).order_by("call_index")
    assert [(e.call_index, e.cost, e.cached_input_tokens) for e in entries] == [
        (0, expected[0], 0),
        (1, expected[1], 1000),
    ]
    reply.refresh_from_db()
    assert reply.cost == sum(expected)
    for budget in (personal, organisation):
        window = window_of(budget)
        assert (window.spent, window.spent_tokens) == (sum(expected), 1200 + 300 + 1600 + 200)
        assert (window.reserved, window.reserved_tokens) == (0, 0)


# --- Expiry ------------------------------------------------------------------------------------


def test_expired_reservations_are_released_once_even_by_overlapping_runs(
    owner, priced_model, dispatched, provider_calls
) -> None:
    personal = budget_for(owner, Decimal(10))
    organisation = organisation_budget(Decimal(100))
    sends = [send(owner.pk) for _ in range(3)]
    reservations = Reservation.objects.filter(message__in=[s.reply for s in sends])
    assert reservations.count() == 6  # three replies × two budgets
    per_call = reservations.first().amount  # type: ignore[union-attr]
    latest = max(r.expires_at for r in reservations)

    assert reservations_release_expired() == 0  # nothing has expired yet
    assert window_of(personal).reserved == 3 * per_call

    # Two runs of the periodic job at once (beat fired twice, a slow worker): each hold is
    # released by exactly one of them.
    released = run_together([lambda: reservations_release_expired(now=just_after(latest))] * 2)
    assert sorted(released) in ([0, 6], [1, 5], [2, 4], [3, 3])
    assert sum(released) == 6
    for budget in (personal, organisation):
        window = window_of(budget)
        assert (window.reserved, window.reserved_tokens, window.spent) == (0, 0, 0)
    assert set(reservations.values_list("status", flat=True)) == {Reservation.Status.EXPIRED}
    assert reservations_release_expired(now=just_after(latest)) == 0

    # The "crashed" calls finish after all: they are charged, and release nothing again.
    for reply_id in dispatched:
        reply_generate(reply_id=reply_id)
    assert len(provider_calls) == 3
    spent = ledger_total(user=owner)
    for budget in (personal, organisation):
        window = window_of(budget)
        assert (window.reserved, window.reserved_tokens, window.spent) == (0, 0, spent)
    assert set(reservations.values_list("status", flat=True)) == {Reservation.Status.EXPIRED}


def test_a_release_committed_while_a_reply_settles_is_not_subtracted_again(
    owner, priced_model, dispatched, monkeypatch
) -> None:
    """The expiry job frees a hold between the settlement reading it and locking its window.

    Forced interleaving: the settlement pauses right after it has read the reply's held
    reservations (at its next step, looking up the budgets) until the release has committed
    or is seen waiting for a lock.
    """
    personal = budget_for(owner, Decimal(10))
    late = send(owner.pk)  # the reply whose worker was thought dead
    other = send(owner.pk)  # another reply, still in progress
    late_hold = Reservation.objects.get(message=late.reply)
    other_hold = Reservation.objects.get(message=other.reply)
    assert late_hold.expires_at < other_hold.expires_at
    assert window_of(personal).reserved == late_hold.amount + other_hold.amount

    reply = reply_claim(reply_id=late.reply.pk)
    assert reply is not None
    calls = [CallUsage(model=MODEL, provider="demo", input_tokens=40, output_tokens=100)]

    paused, resume = threading.Event(), threading.Event()
    budgets_for = costs.services.budgets_for

    def pausing_budgets_for(user: Any, api_key: Any = None) -> list[Budget]:
        if threading.current_thread().name == "settle":
            paused.set()
            resume.wait(30)
        return budgets_for(user, api_key)

    monkeypatch.setattr(costs.services, "budgets_for", pausing_budgets_for)
    settle = Background(
        lambda: reply_finish(reply=reply, outcome=finished_outcome(calls)), "settle"
    )
    settle.start()
    assert paused.wait(30), "the settlement never reached its budgets"
    release = Background(
        lambda: reservations_release_expired(now=just_after(late_hold.expires_at)), "release"
    )
    release.start()
    wait_until(lambda: not release.is_alive() or lock_waiters() > 0)
    resume.set()
    assert settle.finish() is True
    released = release.finish()
    assert released in (0, 1)

    entry = CostEntry.objects.get(message=late.reply)
    window = window_of(personal)
    # Whoever won, the late reply's hold is gone once and the other reply's is still there.
    assert (window.reserved, window.reserved_tokens) == (other_hold.amount, other_hold.tokens)
    assert window.spent == entry.cost
    late_hold.refresh_from_db()
    expected_status = Reservation.Status.EXPIRED if released else Reservation.Status.SETTLED
    assert late_hold.status == expected_status

    # And when the other reply settles, the window holds exactly nothing: never negative.
    other_reply = reply_claim(reply_id=other.reply.pk)
    assert other_reply is not None
    assert reply_finish(reply=other_reply, outcome=finished_outcome(calls)) is True
    window.refresh_from_db()
    assert (window.reserved, window.reserved_tokens) == (0, 0)
    assert window.spent == ledger_total(user=owner)


def test_a_release_racing_a_settlement_for_the_same_window_neither_fails(
    owner, priced_model, dispatched
) -> None:
    """Settlement and release queue for the same window lock, the settlement first.

    Forced interleaving: a third session holds the window (as a concurrent send would) while
    the settlement and then the release start and wait for it. Both must complete, and the
    hold must end released exactly once.
    """
    personal = budget_for(owner, Decimal(10))
    late = send(owner.pk)
    hold = Reservation.objects.get(message=late.reply)
    reply = reply_claim(reply_id=late.reply.pk)
    assert reply is not None
    calls = [CallUsage(model=MODEL, provider="demo", input_tokens=40, output_tokens=100)]
    window = window_of(personal)

    with window_locked(window.pk):
        settle = Background(
            lambda: reply_finish(reply=reply, outcome=finished_outcome(calls)), "settle"
        )
        settle.start()
        assert wait_until(lambda: lock_waiters() == 1), "the settlement is not waiting"
        release = Background(
            lambda: reservations_release_expired(now=just_after(hold.expires_at)), "rel"
        )
        release.start()
        assert wait_until(lambda: lock_waiters() == 2), "the release is not waiting"

    assert settle.finish() is True
    assert release.finish() in (0, 1)
    window.refresh_from_db()
    assert (window.reserved, window.reserved_tokens) == (0, 0)
    assert window.spent == CostEntry.objects.get(message=late.reply).cost
    hold.refresh_from_db()
    assert hold.status in (Reservation.Status.SETTLED, Reservation.Status.EXPIRED)
