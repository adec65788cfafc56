"""One budget raced from the three entry points at once, with every piece a real process.

daphne (`manage.py serve`), a Celery worker, PostgreSQL and the Redis channel layer and
broker (tests/production/processes.py), the model an `openai-compatible` catalogue entry
served by the loopback OpenAIDouble in this process, which counts what reaches the provider.

Fifty people each make one request at the same moment: seventeen on the chat socket
(/ws/chat/), seventeen on the REST API (POST /api/v1/chat) and sixteen with the `openai`
SDK (POST /v1/chat/completions). One organisation budget fits exactly ten calls (ten times
what a first turn holds, as in test_costs_postgres.py's race of one entry point). Each person
sends once, so the per-person limits (left at their defaults) never refuse; only the budget
does. The worker starts once every request has been admitted or refused: the ten accepted
replies wait on the broker, as they would behind busy workers, so no settlement frees room
before the race is decided.

What must hold: exactly ten requests reach the provider and complete; the forty others are
refused with the budget's code in each entry point's own shape (socket `error` frame
`budget_exceeded`, REST 402 `budget_exceeded`, OpenAI 429 `insufficient_quota`), each
naming the budget and audited once; the window never holds or spends more than its limit;
every hold is settled, one ledger row per provider call.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from providers.testing.openai_server import OpenAIDouble, RecordedRequest
from tests.production.processes import (
    ChatSocket,
    Database,
    RedisDatabase,
    Stack,
    WebProcess,
    base_env,
    launcher,
    own_services,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(150)]

MODEL = "upstream"
CALLS_THAT_FIT = 10
SOCKET, REST, OPENAI = "socket", "rest", "openai"
#: Request n goes through ENTRY_POINTS[n % 3]: 17 socket sends, 17 REST calls, 16 SDK calls.
ENTRY_POINTS = (SOCKET, REST, OPENAI)
REQUESTS = 50
PEOPLE = [f"racer-{n:02d}" for n in range(REQUESTS)]
PASSWORD = "Budget-Race-Passw0rd-2026!"
BUDGET = "Organisation"
#: The conversation source each entry point stores.
SOURCES = {SOCKET: "web", REST: "api", OPENAI: "openai"}

# Run once by `manage.py shell`: the upstream model with a price; the people (a password for
# those on the socket, an API key with the chat scope for the others); and the organisation
# budget sized to what ten first turns hold (every text has the same length, so the same
# estimate: checked here, and each hold is checked against it afterwards).
SEED = """
import json
from datetime import timedelta
from decimal import Decimal
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from accounts.api_keys import api_key_create
from accounts.models import User
from costs.models import Budget, ModelPrice
from costs.services import estimate_max
from providers.base import ChatMessage
from providers.models import AIModel
from providers.registry import model_for_user
from providers.window import message_tokens
seed = json.loads({seed!r})
model = AIModel.objects.create(
    key=seed["model"], display_name="Upstream", provider="openai-compatible",
    provider_model_id="double-model", available_to_everyone=True,
    context_window=16384, max_output_tokens=2048, options={{"base_url": seed["base_url"]}},
)
ModelPrice.objects.create(
    model=model, input_per_million=Decimal("2"), output_per_million=Decimal("8"),
    effective_from=timezone.now() - timedelta(days=1),
)
keys = {{}}
for username in seed["socket_people"] + seed["key_people"]:
    user = User.objects.create_user(username=username, email=f"{{username}}@example.com")
    if username in seed["key_people"]:
        keys[username] = api_key_create(
            owner=user, name="budget race", scopes=["chat"], actor=None
        )[1]
# One hash for everyone on the socket: hashing fifty times would only slow the test down.
User.objects.filter(username__in=seed["socket_people"]).update(
    password=make_password(seed["password"])
)
someone = User.objects.get(username=seed["socket_people"][0])

def first_turn_input(text):
    return sum(
        message_tokens(m)
        for m in (
            ChatMessage("user", settings.CHAT_SYSTEM_PROMPT),
            ChatMessage("user", text),
            ChatMessage("assistant", ""),
        )
    )

holds = {{
    estimate_max(
        model=model_for_user(seed["model"], someone),
        input_tokens=first_turn_input(text),
        when=timezone.now(),
    ).amount
    for text in seed["texts"]
}}
assert len(holds) == 1, holds
(per_call,) = holds
assert per_call > 0
budget = Budget.objects.create(
    name=seed["budget"], scope="organisation", period="monthly",
    limit_amount=per_call * seed["fit"], action="block",
)
print(json.dumps({{"keys": keys, "per_call": str(per_call), "budget": budget.pk}}))
"""


def text_of(n: int) -> str:
    """Request n's message: distinct (so each provider call names its request), one length."""
    return f"Budget race request {n:02d} of {REQUESTS}: how much of the budget is left?"


def entry_of(n: int) -> str:
    return ENTRY_POINTS[n % len(ENTRY_POINTS)]


@dataclass
class Outcome:
    """What one request got: the reply's text when accepted, else the refusal."""

    n: int
    entry: str
    accepted: bool
    #: The refusal: HTTP status (None on the socket), code, message, the whole answer.
    status: int | None = None
    code: str | None = None
    message: str = ""
    answer: Any = None
    #: The accepted request's reply as its client saw it, and its id.
    reply: str = ""
    reply_id: str = ""

    @property
    def person(self) -> str:
        return PEOPLE[self.n]


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        yield double


@pytest.fixture
def services() -> Iterator[tuple[Database, RedisDatabase]]:
    with own_services("eai_budget_race") as found:
        yield found


@pytest.fixture
def launch(
    request: pytest.FixtureRequest,
    services: tuple[Database, RedisDatabase],
    tmp_path: Path,
) -> Iterator[Callable[..., Stack]]:
    """launch(**env) -> a Stack; every process ended (and, on failure, its log tail
    reported) at teardown."""
    database, redis = services
    env = base_env(
        database_url=database.url,
        redis_url=redis.url,
        key_prefix=f"eai-budget-race-{secrets.token_hex(3)}",
        data_dir=tmp_path / "data",
        # Another engineer's per-key rate limit: off, so that only the budget refuses.
        API_KEY_REQUESTS_PER_MINUTE="0",
        # Seventeen sign-ins from one address within a minute.
        LOGIN_RATE_LIMIT_PER_MINUTE="200",
    )
    with launcher(request, tmp_path, env) as make:
        yield make


# --- The three clients ---------------------------------------------------------------------------


class Race:
    """The fifty requests; `refused` counts the answers that refused or failed so far."""

    def __init__(self, web: WebProcess, keys: dict[str, str], threads: ThreadPoolExecutor) -> None:
        self.web = web
        self.keys = keys
        self.threads = threads
        self.go = asyncio.Event()
        self.refused = 0

    def decided(self, outcome: Outcome) -> Outcome:
        if not outcome.accepted:
            self.refused += 1
        return outcome

    async def over_socket(self, n: int, chat: ChatSocket) -> Outcome:
        await self.go.wait()
        await chat.send({"type": "send", "conversation": None, "text": text_of(n), "model": MODEL})
        admission = (await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=60))[-1]
        if admission["type"] == "error":
            return self.decided(
                Outcome(
                    n,
                    SOCKET,
                    accepted=False,
                    code=admission.get("code"),
                    message=str(admission.get("reason", "")),
                    answer=admission,
                )
            )
        reply = admission["message"]
        end = (
            await chat.until(
                lambda f: f.get("message") == reply and f["type"] in {"done", "error"}, timeout=90
            )
        )[-1]
        assert end["type"] == "done" and end.get("status") == "complete", end
        deltas = [f for f in chat.frames if f["type"] == "delta" and f["message"] == reply]
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        streamed = "".join(d["text"] for d in deltas)
        return Outcome(n, SOCKET, accepted=True, reply=streamed, reply_id=reply)

    def _rest_call(self, n: int) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.web.base_url}/api/v1/chat",
            data=json.dumps({"message": text_of(n), "model": MODEL}).encode(),
            headers={
                "Authorization": f"Bearer {self.keys[PEOPLE[n]]}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, body.decode(errors="replace")

    async def over_rest(self, n: int) -> Outcome:
        await self.go.wait()
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(self.threads, self._rest_call, n)
        if status == 200:
            assert body["status"] == "complete", body
            return Outcome(
                n, REST, accepted=True, reply=body["message"], reply_id=body["message_id"]
            )
        error = body.get("error", {}) if isinstance(body, dict) else {}
        return self.decided(
            Outcome(
                n,
                REST,
                accepted=False,
                status=status,
                code=error.get("code"),
                message=str(error.get("message", "")),
                answer=body,
            )
        )

    async def over_openai(self, n: int) -> Outcome:
        client = openai.AsyncOpenAI(
            base_url=f"{self.web.base_url}/v1",
            api_key=self.keys[PEOPLE[n]],
            max_retries=0,  # the SDK would retry a 429 on its own
            timeout=120,
        )
        try:
            await self.go.wait()
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": text_of(n)}]
            )
        except openai.APIStatusError as exc:
            return self.decided(
                Outcome(
                    n,
                    OPENAI,
                    accepted=False,
                    status=exc.status_code,
                    code=exc.code,
                    message=exc.message,
                    answer={"type": type(exc).__name__, "error_type": exc.type, "body": exc.body},
                )
            )
        finally:
            await client.close()
        (choice,) = completion.choices
        assert choice.finish_reason == "stop", completion
        return Outcome(
            n,
            OPENAI,
            accepted=True,
            reply=choice.message.content or "",
            reply_id=completion.id.removeprefix("chatcmpl-"),
        )


# --- Helpers -------------------------------------------------------------------------------------


def prompt_of(record: RecordedRequest) -> str:
    """The last user message of a request that reached the upstream."""
    messages = record.body.get("messages") if isinstance(record.body, dict) else None
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1].get("content")) if users else ""


def window_of(database: Database, budget: int) -> tuple[Decimal, Decimal, int, int]:
    """The budget's one window: (spent, reserved, spent tokens, reserved tokens)."""
    rows = database.rows(
        "SELECT spent, reserved, spent_tokens, reserved_tokens FROM costs_budgetwindow "
        "WHERE budget_id = %s",
        budget,
    )
    assert len(rows) == 1, f"budget {budget} has {len(rows)} windows"
    spent, reserved, spent_tokens, reserved_tokens = rows[0]
    return spent, reserved, spent_tokens, reserved_tokens


# --- The race ------------------------------------------------------------------------------------


async def test_fifty_requests_over_socket_rest_and_openai_never_overshoot_a_budget_that_fits_ten(
    launch: Callable[..., Stack],
    services: tuple[Database, RedisDatabase],
    upstream: OpenAIDouble,
) -> None:
    database, redis = services
    stack = launch()
    stack.manage("migrate", "--noinput")
    socket_people = [PEOPLE[n] for n in range(REQUESTS) if entry_of(n) == SOCKET]
    seed = {
        "model": MODEL,
        "base_url": upstream.base_url,
        "password": PASSWORD,
        "socket_people": socket_people,
        "key_people": [p for p in PEOPLE if p not in socket_people],
        "texts": [text_of(n) for n in range(REQUESTS)],
        "budget": BUDGET,
        "fit": CALLS_THAT_FIT,
    }
    seeded = json.loads(
        stack.manage("shell", "-c", SEED.format(seed=json.dumps(seed))).strip().splitlines()[-1]
    )
    per_call, budget = Decimal(seeded["per_call"]), int(seeded["budget"])
    limit = per_call * CALLS_THAT_FIT
    # Every budget that applies to these people: the organisation's alone.
    assert database.rows("SELECT id, limit_amount FROM costs_budget WHERE enabled") == [
        (budget, limit)
    ]
    web = stack.start_web()

    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(max_workers=20, thread_name_prefix="race")
    sockets: dict[int, ChatSocket] = {}
    tasks: list[asyncio.Task[Outcome]] = []
    try:
        cookies = await asyncio.gather(
            *(
                loop.run_in_executor(threads, sign_in, web.base_url, person, PASSWORD)
                for person in socket_people
            )
        )
        on_socket = [n for n in range(REQUESTS) if entry_of(n) == SOCKET]
        for n, cookie in zip(on_socket, cookies, strict=True):
            sockets[n] = await ChatSocket.connect(web.base_url, cookie)
        race = Race(web, seeded["keys"], threads)
        tasks = [
            asyncio.create_task(
                race.over_socket(n, sockets[n])
                if n in sockets
                else race.over_rest(n)
                if entry_of(n) == REST
                else race.over_openai(n)
            )
            for n in range(REQUESTS)
        ]
        await asyncio.sleep(0.2)  # every client ready at the starting line
        race.go.set()

        # Decided: each request either refused (answered) or stored (a conversation).
        # No worker runs yet, so nothing accepted can settle and free room meanwhile.
        deadline = time.monotonic() + 60
        while True:
            stored = await asyncio.to_thread(
                database.value, "SELECT count(*) FROM conversations_conversation"
            )
            if race.refused + stored >= REQUESTS:
                break
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            if failed:
                error = failed[0].exception()
                assert error is not None
                raise error
            assert time.monotonic() < deadline, (
                f"after 60 s only {race.refused} refusals and {stored} stored requests"
            )
            await asyncio.sleep(0.1)

        # The race is decided: the window holds exactly its limit, nothing is spent, and
        # the accepted replies wait on the broker; nothing has reached the provider.
        assert (stored, race.refused) == (CALLS_THAT_FIT, REQUESTS - CALLS_THAT_FIT)
        spent, reserved, _, _ = await asyncio.to_thread(window_of, database, budget)
        assert (spent, reserved) == (0, limit)
        assert upstream.model_requests() == []
        assert await asyncio.to_thread(redis.client().llen, "llm") == CALLS_THAT_FIT

        worker = stack.start_worker(concurrency=CALLS_THAT_FIT, wait=False)
        await asyncio.to_thread(worker.wait_ready, 60)
        outcomes: list[Outcome] = await asyncio.wait_for(asyncio.gather(*tasks), 90)
    finally:
        # On a failure, requests still waiting for a reply are abandoned, not awaited.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for chat in sockets.values():
            await chat.close()
        threads.shutdown(wait=False, cancel_futures=True)

    accepted = [o for o in outcomes if o.accepted]
    refused = [o for o in outcomes if not o.accepted]
    assert (len(accepted), len(refused)) == (CALLS_THAT_FIT, REQUESTS - CALLS_THAT_FIT)

    # Each refusal in its entry point's own shape, with the budget's code, naming it.
    shapes = {
        SOCKET: (None, "budget_exceeded"),
        REST: (402, "budget_exceeded"),
        OPENAI: (429, "insufficient_quota"),
    }
    wrong = [
        (o.n, o.entry, o.answer)
        for o in refused
        if (o.status, o.code) != shapes[o.entry] or f"The {BUDGET} budget" not in o.message
    ]
    assert wrong == []
    for o in refused:
        if o.entry == OPENAI:
            assert o.answer["type"] == "RateLimitError", o.answer
            assert o.answer["error_type"] == "insufficient_quota", o.answer
        if o.entry == SOCKET:
            assert o.answer["type"] == "error", o.answer
    # 16 or 17 requests per entry point and ten that fit: every entry point refuses some.
    assert {o.entry for o in refused} == set(ENTRY_POINTS)

    # Exactly the ten accepted requests reached the provider, once each, and each client got
    # the upstream's reply, as stored.
    reached = upstream.model_requests()
    assert sorted(prompt_of(r) for r in reached) == sorted(text_of(o.n) for o in accepted)
    replies = {prompt_of(r): r.reply for r in reached}
    for o in accepted:
        assert o.reply and o.reply == replies[text_of(o.n)], (o.n, o.entry, o.reply)
    stored_replies = {
        public_id: database.plaintext(content)
        for public_id, content in database.rows(
            "SELECT public_id::text, content FROM conversations_message "
            "WHERE role = 'assistant' AND status = 'complete'"
        )
    }
    assert len(stored_replies) == CALLS_THAT_FIT
    for o in accepted:
        assert stored_replies[str(uuid.UUID(o.reply_id))] == o.reply

    # One conversation per accepted request, from its own entry point and person.
    conversations = database.rows(
        "SELECT u.username, c.source FROM conversations_conversation c "
        "JOIN accounts_user u ON u.id = c.owner_id"
    )
    assert sorted(conversations) == sorted((o.person, SOURCES[o.entry]) for o in accepted)

    # The books: one hold per accepted reply, each the first turn's estimate, all settled; one
    # ledger row per provider call; the window spent what the ledger says, within the limit.
    holds = database.rows(
        "SELECT r.amount, r.status, w.budget_id FROM costs_reservation r "
        "JOIN costs_budgetwindow w ON w.id = r.window_id"
    )
    assert len(holds) == CALLS_THAT_FIT
    assert set(holds) == {(per_call, "settled", budget)}
    entries = database.rows("SELECT message_id, call_index, cost FROM costs_costentry")
    assert len(entries) == CALLS_THAT_FIT
    assert len({message for message, _, _ in entries}) == CALLS_THAT_FIT
    assert {index for _, index, _ in entries} == {0}
    ledger = sum((cost for _, _, cost in entries), start=Decimal(0))
    spent, reserved, spent_tokens, reserved_tokens = window_of(database, budget)
    assert (reserved, reserved_tokens) == (0, 0)
    assert 0 < spent == ledger <= limit
    assert spent_tokens == database.value(
        "SELECT sum(input_tokens + output_tokens) FROM costs_costentry"
    )

    # Each refusal audited once, against the budget, as the refused person.
    # (The web processes chain events on a thread just after each commit: wait for them.)
    def chained_refusals() -> list[tuple[Any, ...]] | None:
        rows = database.rows(
            "SELECT u.username, e.target_type, e.target_id, e.outcome FROM audit_auditevent e "
            "JOIN accounts_user u ON u.id = e.actor_id WHERE e.action = 'budget.refused'"
        )
        return rows if len(rows) >= len(refused) else None

    refusals = wait_until(chained_refusals, timeout=15, what="the refusals chained")
    assert sorted(refusals) == sorted((o.person, "budget", str(budget), "denied") for o in refused)
