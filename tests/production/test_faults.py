"""Faults on the production path, with every piece a real process (tests/production/processes.py).

daphne, Celery workers (thread pool), Celery beat, PostgreSQL, Redis, RabbitMQ, and the
loopback OpenAI-compatible upstream (providers/testing/openai_server.py) in this process.
Each test starts what it needs, breaks one thing mid-reply, and checks what a person sees on
their socket, what is stored, and the books: one ledger row per provider call, no budget
hold left behind.

The heartbeat runs fast here (every 1 s, stale after 4 s, swept every 1 s) so that every
test is bounded well under a minute. Run by `make test-production`; a failing test prints
each process's log (and the temporary directory holding them).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import service_missing
from providers.testing.openai_server import OpenAIDouble, RecordedRequest
from tests.production.processes import (
    ChatSocket,
    Database,
    Process,
    RedisDatabase,
    RedisServer,
    Stack,
    WebProcess,
    base_env,
    launcher,
    login_page,
    own_services,
    rabbitmq_missing,
    redis_server_missing,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(150)]

#: One person per test, so that a test's leftovers (a reply stuck in flight counts against the
#: per-person limit) cannot fail the next one.
#: (Room for more tests than there are: a test that runs out fails with IndexError.)
PEOPLE = [f"fault-tester-{n}" for n in range(1, 17)]
PASSWORD = "Faults-Only-Passw0rd-2026!"
MODEL = "upstream"
#: A second upstream model, served by a double of its own, so that one test can pace two
#: replies differently at once.
PACED_MODEL = "upstream-paced"

HEARTBEAT_SECONDS = 1
HEARTBEAT_TIMEOUT_SECONDS = 4
SWEEP_SECONDS = 1
#: A reply whose worker died is failed within the heartbeat timeout plus a sweep or two;
#: the rest is slack for a loaded two-core machine.
SWEPT_WITHIN = HEARTBEAT_TIMEOUT_SECONDS + 2 * SWEEP_SECONDS + 10

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

FAST_HEARTBEAT = {
    "CHAT_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    "CHAT_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT_SECONDS),
    "CHAT_SWEEP_SECONDS": str(SWEEP_SECONDS),
}

# Run once per module by `manage.py shell`: the person, the upstream model with a price, and
# an organisation budget, so that every send holds money until its reply settles.
SEED = """
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.models import User
from costs.models import Budget, ModelPrice
from providers.models import AIModel
seed = json.loads({seed!r})
for username in seed["people"]:
    User.objects.create_user(
        username=username, email=f"{{username}}@example.com", password=seed["password"]
    )
for key, base_url in seed["models"].items():
    model = AIModel.objects.create(
        key=key, display_name=key, provider="openai-compatible",
        provider_model_id="double-model", available_to_everyone=True,
        context_window=16384, max_output_tokens=2048, options={{"base_url": base_url}},
    )
    ModelPrice.objects.create(
        model=model, input_per_million=Decimal("2"), output_per_million=Decimal("8"),
        effective_from=timezone.now() - timedelta(days=1),
    )
Budget.objects.create(
    name="Organisation", scope="organisation", period="monthly",
    limit_amount=Decimal("1000"), action="block",
)
print("seeded")
"""


# --- Fixtures -------------------------------------------------------------------------------


@dataclass
class Site:
    """What the module's tests share: the database, the Redis database, the upstream."""

    database: Database
    redis: RedisDatabase
    env: dict[str, str]
    upstream: OpenAIDouble
    people: list[str] = field(default_factory=lambda: list(PEOPLE))


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        yield double


@pytest.fixture(scope="module")
def paced_upstream() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        yield double


@pytest.fixture(scope="module")
def site(
    upstream: OpenAIDouble,
    paced_upstream: OpenAIDouble,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    """A fresh PostgreSQL database (migrated and seeded once) and a Redis database of its own."""
    with own_services("eai_faults") as (database, redis):
        workdir = tmp_path_factory.mktemp("faults")
        env = base_env(
            database_url=database.url,
            redis_url=redis.url,
            key_prefix=f"eai-faults-{secrets.token_hex(3)}",
            data_dir=workdir,
            **FAST_HEARTBEAT,
        )
        setup = Stack(workdir / "setup", env)
        setup.manage("migrate", "--noinput")
        seed = {
            "people": PEOPLE,
            "password": PASSWORD,
            "models": {MODEL: upstream.base_url, PACED_MODEL: paced_upstream.base_url},
        }
        setup.manage("shell", "-c", SEED.format(seed=json.dumps(seed)))
        yield Site(database, redis, env, upstream)


@pytest.fixture
def person(site: Site) -> str:
    """The username of a person of this test's own (signed in with PASSWORD)."""
    return site.people.pop(0)


@pytest.fixture
def launch(
    request: pytest.FixtureRequest, site: Site, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """launch(**env) -> a Stack for this test, its processes all ended at teardown.

    On failure each process's log tail is added to the report (and the logs stay in
    tmp_path). The Redis database starts empty: no broker message or channel of an earlier
    test is left.
    """
    site.redis.flush()
    site.upstream.reply_text = None
    with launcher(request, tmp_path, site.env) as make:
        yield make


def pace(upstream: OpenAIDouble, *, first_token: float, rate: float, words: int) -> None:
    """Set how the upstream answers: first token after `first_token` seconds, then `rate`
    tokens a second; a reply is about `words` + 5 tokens."""
    upstream.first_token_delay = first_token
    upstream.tokens_per_second = rate
    upstream.reply_words = words


# --- Helpers ----------------------------------------------------------------------------------


def final_for(reply: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("message") == reply and f["type"] in {"done", "error"}


def first_delta_of(reply: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "delta" and f.get("message") == reply


async def send(chat: ChatSocket, text: str, conversation: str | None = None) -> dict[str, Any]:
    """Send a message; its `accepted` frame (AssertionError with the refusal otherwise)."""
    await chat.send({"type": "send", "conversation": conversation, "text": text, "model": MODEL})
    frames = await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=20)
    assert frames[-1]["type"] == "accepted", f"the message was refused: {frames[-1]}"
    return frames[-1]


def streamed_text(frames: list[dict[str, Any]], reply: str) -> str:
    """The reply's deltas joined, checked to be consecutive from seq 1."""
    deltas = [f for f in frames if f["type"] == "delta" and f["message"] == reply]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)), [d["seq"] for d in deltas]
    return "".join(d["text"] for d in deltas)


def calls_for(upstream: OpenAIDouble, text: str) -> list[RecordedRequest]:
    """The upstream requests that answered the message `text`."""
    found = []
    for record in upstream.model_requests():
        messages = record.body.get("messages") if isinstance(record.body, dict) else None
        users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
        # The last user turn ends with the message (after a failed reply, the turns before
        # it are merged into one: providers want user and assistant turns to alternate).
        if users and str(users[-1].get("content")).endswith(text):
            found.append(record)
    return found


@dataclass
class Stored:
    pk: int
    status: str
    error_code: str
    content: str


def stored(site: Site, reply: str) -> Stored:
    row = site.database.rows(
        "SELECT id, status, error_code, content FROM conversations_message WHERE public_id = %s",
        reply,
    )
    assert row, f"reply {reply} is not stored"
    pk, status, error_code, content = row[0]
    return Stored(pk, status, error_code, site.database.plaintext(content))


def settled_within(site: Site, reply: str, timeout: float) -> Stored:
    """The reply once it is neither pending nor streaming (AssertionError if it stays so)."""
    wait_until(
        lambda: stored(site, reply).status not in {"pending", "streaming"},
        timeout=timeout,
        what=f"reply {reply} to leave pending/streaming",
    )
    return stored(site, reply)


def assert_books_balanced(site: Site, person: str, calls_by_reply: dict[str, int]) -> None:
    """No hold of the person's left; each reply held money once and has at most one ledger row
    per provider call (exactly one per call when it completed)."""
    held = site.database.rows(
        "SELECT m.public_id, m.status, r.amount FROM costs_reservation r "
        "JOIN conversations_message m ON m.id = r.message_id "
        "JOIN conversations_conversation c ON c.id = m.conversation_id "
        "JOIN accounts_user u ON u.id = c.owner_id "
        "WHERE r.status = 'held' AND u.username = %s",
        person,
    )
    assert not held, f"budget holds left behind: {held}"
    # Whatever else is held, each budget window holds exactly its held reservations.
    windows = site.database.rows(
        "SELECT w.id, w.reserved, coalesce(sum(r.amount) FILTER (WHERE r.status = 'held'), 0) "
        "FROM costs_budgetwindow w LEFT JOIN costs_reservation r ON r.window_id = w.id "
        "GROUP BY w.id, w.reserved"
    )
    assert windows, "no budget window: the organisation budget held nothing"
    for window, reserved, held_amount in windows:
        assert reserved == held_amount, f"window {window} reserves {reserved}, holds {held_amount}"
    for reply, calls in calls_by_reply.items():
        row = stored(site, reply)
        holds = site.database.value(
            "SELECT count(*) FROM costs_reservation WHERE message_id = %s", row.pk
        )
        assert holds == 1, f"reply {reply} made {holds} reservations (the budget applies once)"
        indexes = [
            index
            for (index,) in site.database.rows(
                "SELECT call_index FROM costs_costentry WHERE message_id = %s ORDER BY call_index",
                row.pk,
            )
        ]
        assert len(indexes) <= calls, (
            f"reply {reply} ({row.status}): {len(indexes)} ledger rows for {calls} provider calls"
        )
        if row.status == "complete":
            assert indexes == list(range(calls)), (
                f"complete reply {reply}: ledger rows {indexes} for {calls} provider calls"
            )


def assistant_replies(site: Site, conversation: str) -> list[tuple[str, str]]:
    return [
        (str(public_id), status)
        for public_id, status in site.database.rows(
            "SELECT m.public_id, m.status FROM conversations_message m "
            "JOIN conversations_conversation c ON c.id = m.conversation_id "
            "WHERE c.public_id = %s AND m.role = 'assistant' ORDER BY m.id",
            conversation,
        )
    ]


def worker_that_took_the_reply(workers: list[Process]) -> Process:
    """The worker whose log shows it received a generate_reply task."""
    took = wait_until(
        lambda: [w for w in workers if "generate_reply[" in w.log() and "received" in w.log()],
        timeout=10,
        what="a worker to receive the reply task",
    )
    assert len(took) == 1, f"several workers received a reply task: {took}"
    return took[0]


def redeliver(broker_url: str, reply_pk: int) -> str:
    """Put the reply's task on the broker again, as a redelivery would; the task id."""
    app = Celery("faults-redelivery", broker=broker_url, set_as_current=False)
    try:
        result = app.send_task(
            "conversations.tasks.generate_reply", args=(reply_pk,), queue="llm", routing_key="llm"
        )
        return str(result.id)
    finally:
        app.close()


async def complete_turn(
    site: Site, chat: ChatSocket, text: str, conversation: str | None = None
) -> tuple[dict[str, Any], str]:
    """One chat turn that must complete: (accepted frame, the streamed text)."""
    accepted = await send(chat, text, conversation)
    reply = accepted["message"]
    frames = await chat.until(final_for(reply), timeout=30)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete", frames[-1]
    text_seen = streamed_text(chat.frames, reply)
    row = stored(site, reply)
    assert row.status == "complete"
    (call,) = calls_for(site.upstream, text)
    assert text_seen == row.content == call.reply and row.content
    return accepted, text_seen


async def killed_worker_is_swept(
    site: Site,
    stack: Stack,
    web: WebProcess,
    workers: list[Process],
    person: str,
    text: str,
) -> tuple[ChatSocket, dict[str, Any]]:
    """Send, kill the worker writing the reply mid-reply, and see the person told.

    Returns the open socket and the `accepted` frame.
    """
    pace(site.upstream, first_token=0.2, rate=8, words=60)  # about 8 s: the kill lands mid-reply
    cookie = sign_in(web.base_url, person, PASSWORD)
    chat = await ChatSocket.connect(web.base_url, cookie)
    try:
        accepted = await send(chat, text)
        reply = accepted["message"]
        await chat.until(first_delta_of(reply), timeout=20)
        worker_that_took_the_reply(workers).kill()
        killed_at = time.monotonic()
        try:
            frames = await chat.until(final_for(reply), timeout=SWEPT_WITHIN)
        except AssertionError as exc:
            row = stored(site, reply)
            raise AssertionError(
                f"the person was not told: {exc}; the reply is {row.status!r} "
                f"(processes: {stack.states()})"
            ) from None
        told_after = time.monotonic() - killed_at
        error = frames[-1]
        assert error["type"] == "error", f"the reply ended as {error} after its worker was killed"
        assert error["code"] == "interrupted", error
        assert error["conversation"] == accepted["conversation"] and error["message"] == reply
        assert isinstance(error.get("reason"), str) and error["reason"].strip(), error
        assert told_after <= SWEPT_WITHIN
        row = stored(site, reply)
        assert (row.status, row.error_code) == ("failed", "interrupted")
        assert len(calls_for(site.upstream, text)) == 1
        assert_books_balanced(site, person, {reply: 1})
    except BaseException:
        await chat.close()
        raise
    return chat, accepted


# --- 1 and 2: a worker killed mid-reply ---------------------------------------------------------


async def test_worker_killed_mid_reply_is_swept_by_the_other_worker(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    stack = launch()
    web = stack.start_web(wait=False)
    workers = [
        stack.start_worker("worker-a", wait=False),
        stack.start_worker("worker-b", wait=False),
    ]
    stack.wait_ready(web, *workers)

    text = "Fault one: the worker writing this reply is killed"
    chat, accepted = await killed_worker_is_swept(site, stack, web, workers, person, text)
    async with chat:
        reply, conversation = accepted["message"], accepted["conversation"]
        survivor = next(w for w in workers if w.alive)

        # A redelivered task for the failed reply does nothing: no second reply, no charge.
        since = survivor.log_size()
        task_id = redeliver(site.redis.url, stored(site, reply).pk)
        survivor.wait_for_log(rf"generate_reply\[{task_id}\] succeeded", timeout=20, since=since)
        assert [f for f in await chat.quiet_for(1.0) if f.get("message") == reply] == []
        assert assistant_replies(site, conversation) == [(reply, "failed")]
        assert_books_balanced(site, person, {reply: 1})

        # A fresh worker joins; the conversation is not busy and the next turn completes.
        stack.start_worker("worker-c")
        pace(site.upstream, first_token=0.1, rate=60, words=30)
        follow_up = "Fault one: and after the sweep?"
        accepted2, _ = await complete_turn(site, chat, follow_up, conversation)
        assert accepted2["conversation"] == conversation
        assert_books_balanced(site, person, {reply: 1, accepted2["message"]: 1})


def pool_processes(worker: Process) -> list[int]:
    """The pids of a prefork worker's pool processes (its children)."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return [int(pid) for pid in children]


async def test_prefork_pool_process_killed_mid_reply_is_swept_and_the_worker_carries_on(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    """Celery's prefork pool: its pool processes, the one writing the reply among them, are
    SIGKILLed. The worker forks new ones and redelivers the task at once (acks late, reject
    on worker lost), which finds the reply claimed by a process that may still be alive and
    leaves it; the sweeper in the new pool processes fails it as interrupted once its
    heartbeat is stale. The same worker then answers the next turn."""
    stack = launch()
    web = stack.start_web(wait=False)
    worker = stack.start_worker("prefork", pool="prefork", concurrency=2, wait=False)
    stack.wait_ready(web, worker)
    pace(site.upstream, first_token=0.2, rate=8, words=60)

    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        text = "Fault one, prefork: the pool process writing this reply is killed"
        accepted = await send(chat, text)
        reply = accepted["message"]
        await chat.until(first_delta_of(reply), timeout=20)
        children = pool_processes(worker)
        assert len(children) == 2, children
        for pid in children:  # the one writing the reply among them
            os.kill(pid, signal.SIGKILL)
        frames = await chat.until(final_for(reply), timeout=SWEPT_WITHIN + 10)
        error = frames[-1]
        assert error["type"] == "error" and error["code"] == "interrupted", error
        row = stored(site, reply)
        assert (row.status, row.error_code) == ("failed", "interrupted")
        assert len(calls_for(site.upstream, text)) == 1
        assert worker.alive

        pace(site.upstream, first_token=0.1, rate=60, words=30)
        accepted2, _ = await complete_turn(
            site, chat, "Fault one, prefork: and the next turn?", accepted["conversation"]
        )
    assert_books_balanced(site, person, {reply: 1, accepted2["message"]: 1})


async def test_whole_worker_killed_with_only_beat_left_is_swept_by_beat(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    stack = launch()
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    beat = stack.start_beat(wait=False)
    stack.wait_ready(web, worker, beat)

    text = "Fault two: the only worker is killed"
    chat, accepted = await killed_worker_is_swept(site, stack, web, [worker], person, text)
    async with chat:
        assert not worker.alive and beat.alive
        stack.start_worker("worker-fresh")
        pace(site.upstream, first_token=0.1, rate=60, words=30)
        accepted2, _ = await complete_turn(
            site, chat, "Fault two: a fresh worker answers", accepted["conversation"]
        )
        assert_books_balanced(site, person, {accepted["message"]: 1, accepted2["message"]: 1})


# --- 3: Redis restarted mid-reply --------------------------------------------------------------


@dataclass
class Browser:
    """A chat page's socket as static/js/chat.js keeps it: when it closes, reconnect after
    min(15 s, 0.5 s × 2^n) (with jitter), and on every (re)connect subscribe again to the
    conversation shown."""

    base_url: str
    cookie: str
    conversation: str | None = None
    socket: ChatSocket | None = None
    connects: int = 0
    retries: int = 0
    frames: list[dict[str, Any]] = field(default_factory=list)

    async def _ensure_open(self, deadline: float) -> ChatSocket:
        while self.socket is None:
            try:
                self.socket = await ChatSocket.connect(self.base_url, self.cookie, timeout=5)
            except (OSError, InvalidStatus, TimeoutError, ConnectionClosed):
                delay = min(15.0, 0.5 * 2**self.retries) * (0.5 + secrets.randbelow(500) / 1000)
                self.retries += 1
                if time.monotonic() + delay > deadline:
                    raise AssertionError(
                        f"could not reconnect to {self.base_url} ({self.retries} tries)"
                    ) from None
                await asyncio.sleep(delay)
                continue
            self.connects += 1
            self.retries = 0
            if self.conversation is not None:
                await self.socket.send({"type": "subscribe", "conversation": self.conversation})
        return self.socket

    async def send(self, frame: dict[str, Any], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            socket = await self._ensure_open(deadline)
            try:
                await socket.send(frame)
                return
            except ConnectionClosed:
                self.socket = None

    async def until(
        self, stop: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            socket = await self._ensure_open(deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no awaited frame within {timeout:g}s; got {received}")
            try:
                frame = await socket.receive(remaining)
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.socket = None
                delay = min(15.0, 0.5 * 2**self.retries) * (0.5 + secrets.randbelow(500) / 1000)
                self.retries += 1
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                continue
            received.append(frame)
            self.frames.append(frame)
            if stop(frame):
                return received

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()


def reply_outcome(reply: str) -> Callable[[dict[str, Any]], bool]:
    """A frame that tells how the reply ended: its done or error, or a snapshot showing it
    finished."""

    def seen(frame: dict[str, Any]) -> bool:
        if frame.get("message") == reply and frame["type"] in {"done", "error"}:
            return True
        if frame["type"] == "snapshot":
            return any(
                m["id"] == reply and m["status"] not in {"pending", "streaming"}
                for m in frame["messages"]
            )
        return False

    return seen


async def test_redis_restarted_mid_reply_sockets_reconnect_and_chat_carries_on(
    site: Site, launch: Callable[..., Stack], person: str, tmp_path: Path
) -> None:
    missing = redis_server_missing()
    if missing:
        service_missing(missing)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        stack = launch(REDIS_URL=redis.url(0))
        web = stack.start_web(wait=False)
        worker = stack.start_worker(wait=False)
        stack.wait_ready(web, worker)
        pace(site.upstream, first_token=0.2, rate=8, words=60)

        browser = Browser(web.base_url, sign_in(web.base_url, person, PASSWORD))
        text = "Fault three: Redis restarts while I read"
        await browser.send({"type": "send", "conversation": None, "text": text, "model": MODEL})
        (accepted,) = [
            f for f in await browser.until(lambda f: f["type"] == "accepted", timeout=20)
            if f["type"] == "accepted"
        ]  # fmt: skip
        reply = accepted["message"]
        browser.conversation = accepted["conversation"]
        await browser.until(first_delta_of(reply), timeout=20)

        redis.restart(downtime=1.0)

        # Told how it ended, on this socket or after reconnecting (never left streaming).
        outcome = await browser.until(reply_outcome(reply), timeout=SWEPT_WITHIN + 15)
        row = settled_within(site, reply, timeout=10)
        assert row.status in {"complete", "failed"}, row
        last = outcome[-1]
        if last["type"] == "snapshot":
            (shown,) = [m for m in last["messages"] if m["id"] == reply]
            assert shown["status"] == row.status
        elif last["type"] == "done":
            assert last["status"] == row.status == "complete"
        else:
            assert row.status == "failed" and last["code"] == row.error_code
        if row.status == "complete":
            (call,) = calls_for(site.upstream, text)
            assert row.content == call.reply

        # No process was restarted, and the next turn completes.
        assert web.alive and worker.alive
        pace(site.upstream, first_token=0.1, rate=60, words=30)
        follow_up = "Fault three: after the restart"
        await browser.send(
            {"type": "send", "conversation": browser.conversation, "text": follow_up,
             "model": MODEL}
        )  # fmt: skip
        accepted_frames = await browser.until(
            lambda f: f["type"] == "accepted" or (f["type"] == "error" and "message" not in f),
            timeout=20,
        )
        accepted2 = accepted_frames[-1]
        assert accepted2["type"] == "accepted", accepted2
        try:
            frames = await browser.until(final_for(accepted2["message"]), timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (processes: {stack.states()})") from None
        assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete", frames[-1]
        await browser.close()
        assert web.alive and worker.alive, "a process died on the way"
        assert_books_balanced(site, person, {reply: 1, accepted2["message"]: 1})
    finally:
        redis.stop()


# --- 4: PostgreSQL connections killed mid-reply ----------------------------------------------


async def test_database_connections_killed_mid_reply_the_web_process_recovers(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    stack = launch()
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(web, worker)
    pace(site.upstream, first_token=0.2, rate=10, words=50)

    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        text = "Fault four: the database drops every connection"
        accepted = await send(chat, text)
        reply = accepted["message"]
        await chat.until(first_delta_of(reply), timeout=20)
        killed = site.database.terminate_connections()
        assert killed >= 1, "no connection to terminate: the fault did not land"

        frames = await chat.until(final_for(reply), timeout=SWEPT_WITHIN + 15)
        row = settled_within(site, reply, timeout=5)
        if frames[-1]["type"] == "done":
            assert frames[-1]["status"] == row.status == "complete"
            (call,) = calls_for(site.upstream, text)
            assert streamed_text(chat.frames, reply) == row.content == call.reply
        else:
            assert row.status == "failed" and frames[-1]["code"] == row.error_code

    # The same web process serves the sign-in page, a new sign-in and a new chat turn.
    status, page = login_page(web.base_url)
    assert status == 200 and "csrfmiddlewaretoken" in page
    pace(site.upstream, first_token=0.1, rate=60, words=30)
    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        accepted2, _ = await complete_turn(
            site, chat, "Fault four: after the reconnect", accepted["conversation"]
        )
    assert web.alive and worker.alive
    assert_books_balanced(site, person, {reply: 1, accepted2["message"]: 1})


# --- A model silent for longer than every timeout ------------------------------------------


async def test_a_model_silent_for_31_seconds_between_tokens_still_completes(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    """With the production defaults (heartbeat every 5 s, swept after 30 s silent, Redis
    reads up to 30 s, daphne pings every 20 s), the socket and the reply outlive a model
    that says nothing for 31 s: the heartbeat comes from the worker, not from tokens."""
    stack = launch(
        CHAT_HEARTBEAT_SECONDS="5", CHAT_HEARTBEAT_TIMEOUT_SECONDS="30", CHAT_SWEEP_SECONDS="10"
    )
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(web, worker)
    site.upstream.reply_text = "Hello there"  # two pieces: "Hello ", then 31 s, "there"
    pace(site.upstream, first_token=0.2, rate=1 / 31, words=2)

    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        text = "A slow thinker"
        accepted = await send(chat, text)
        reply = accepted["message"]
        await chat.until(first_delta_of(reply), timeout=20)
        frames = await chat.until(final_for(reply), timeout=60)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete", frames[-1]
    row = stored(site, reply)
    assert row.status == "complete" and row.content == "Hello there"
    assert streamed_text(chat.frames, reply) == "Hello there"
    assert web.alive and worker.alive
    assert_books_balanced(site, person, {reply: 1})


# --- 5: the channel layer over capacity --------------------------------------------------------


@dataclass
class ReplyView:
    """One reply as the client pieces it together from deltas, snapshots and `done`."""

    conversation: str
    text: str = ""
    seq: int = 0
    gaps: int = 0
    resyncing: bool = False
    repaired_from_snapshot: int = 0  # snapshots that showed it streaming, after a gap
    ended: str = ""  # "done", or "snapshot" when a snapshot showed it finished
    status: str = ""
    html: str = ""


class RepairingClient:
    """A chat client that reads slowly and repairs sequence gaps without waiting for `done`.

    On a gap it subscribes to the conversation again and continues from the snapshot's text
    and `seq` with the deltas after it (docs/websocket-protocol.md). Quiet for 2 s with a
    reply unfinished (its `done` may have been dropped too), it subscribes again to learn
    where the reply stands.
    """

    def __init__(self, chat: ChatSocket, *, slow_read: float) -> None:
        self.chat = chat
        self.slow_read = slow_read
        self.views: dict[str, ReplyView] = {}

    async def send(self, text: str, model: str) -> None:
        await self.chat.send({"type": "send", "conversation": None, "text": text, "model": model})

    async def resync(self, view: ReplyView) -> None:
        view.resyncing = True
        await self.chat.send({"type": "subscribe", "conversation": view.conversation})

    async def read(self, timeout: float) -> None:
        try:
            frame = await self.chat.receive(timeout)
        except TimeoutError:
            for unfinished in self.views.values():
                if not unfinished.ended:
                    await self.resync(unfinished)
            return
        await asyncio.sleep(self.slow_read)
        view = self.views.get(frame.get("message", ""))
        kind = frame["type"]
        if kind == "accepted":
            self.views[frame["message"]] = ReplyView(frame["conversation"])
        elif kind == "error":
            raise AssertionError(f"the server answered {frame}")
        elif kind == "delta" and view is not None and not view.ended:
            if view.resyncing or frame["seq"] <= view.seq:
                return  # what the snapshot on its way (or already applied) holds
            if frame["seq"] != view.seq + 1:
                view.gaps += 1
                await self.resync(view)
                return
            view.text += frame["text"]
            view.seq = frame["seq"]
        elif kind == "done" and view is not None and not view.ended:
            view.ended, view.status, view.html = "done", frame["status"], frame["html"]
        elif kind == "snapshot":
            for message in frame["messages"]:
                shown = self.views.get(message["id"])
                if shown is None or shown.ended or not shown.resyncing:
                    continue
                shown.resyncing = False
                if message["status"] in {"pending", "streaming"}:
                    if message["seq"] >= shown.seq:
                        shown.text, shown.seq = message["text"], message["seq"]
                        shown.repaired_from_snapshot += 1
                else:
                    shown.ended, shown.status = "snapshot", message["status"]
                    shown.html = message.get("html", "")

    async def until(self, done: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not within {timeout:g}s; replies: {self.views}")
            await self.read(min(2.0, remaining))


async def test_channel_layer_over_capacity_drops_are_counted_and_the_client_repairs_the_gap(
    site: Site, launch: Callable[..., Stack], person: str, paced_upstream: OpenAIDouble
) -> None:
    from conversations.rendering import render_markdown

    stack = launch(
        CHANNEL_LAYER_CAPACITY="2",
        CHAT_DELTA_FLUSH_MS="0",  # one channel-layer message per token: a flood
        CHAT_FRAMES_PER_MINUTE="0",  # the repairs subscribe often; that limit is not tested here
    )
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(web, worker)
    # Two fast replies flood the web process's channel; a third, paced one streams through
    # the flood (and loses deltas in it) and goes on after it, so its end and its `done`
    # arrive: the client must rebuild it whole from a snapshot and the deltas after it.
    pace(site.upstream, first_token=0.3, rate=250, words=900)  # a flood for 3.6 s or more
    pace(paced_upstream, first_token=0.3, rate=20, words=240)  # 20 a second for 12 s
    sends = [
        ("Fault five: flood number 1", MODEL, site.upstream),
        ("Fault five: flood number 2", MODEL, site.upstream),
        ("Fault five: paced through the flood", PACED_MODEL, paced_upstream),
    ]

    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        # At most ~250 frames a second read while the floods send 500 and more: the web
        # process's channel stays full for as long as they last, so deltas of the paced reply,
        # which streams meanwhile, are dropped too (at 2 ms a frame a quick machine sometimes
        # kept up and lost only the floods' deltas).
        client = RepairingClient(chat, slow_read=0.004)
        for text, model, _ in sends:  # three: the per-person limit of replies in flight
            await client.send(text, model)
        await client.until(lambda: len(client.views) == 3, timeout=20)
        await client.until(lambda: all(v.ended for v in client.views.values()), timeout=45)
    views = client.views

    drops_key = f"{site.env['REDIS_KEY_PREFIX']}:stats:channel_layer_drops"
    redis = site.redis.client()
    drops = int(redis.get(drops_key) or 0)
    assert drops > 0, (
        f"no drop counted in {drops_key} (keys like it: {redis.keys('*channel_layer_drops*')})"
    )
    warnings = [
        line for line in worker.log().splitlines() if "WARNING" in line and "over capacity" in line
    ]
    assert warnings, "the worker logged no WARNING about the channel layer being over capacity"
    assert sum(view.gaps for view in views.values()) >= 1, (
        f"{drops} messages were dropped but the client saw no sequence gap: {views}"
    )

    for reply, (text, _, upstream) in zip(views, sends, strict=True):
        view, row = views[reply], stored(site, reply)
        (call,) = calls_for(upstream, text)
        assert row.status == view.status == "complete" and row.content == call.reply, reply
        # What the client pieced together is the stored reply so far (a lost last delta
        # shows only in `done`, or in a later snapshot, whose HTML is the whole reply).
        assert row.content.startswith(view.text), f"reply {reply} was pieced together wrongly"
        assert view.html == render_markdown(row.content)
    paced = views[list(views)[2]]
    assert paced.gaps >= 1, f"the flood dropped none of the paced reply's deltas: {views}"
    assert paced.repaired_from_snapshot >= 1, f"no snapshot showed the paced reply: {paced}"
    assert paced.ended == "done", f"the paced reply's end did not arrive: {paced}"
    assert paced.text == stored(site, list(views)[2]).content, (
        "the snapshot and the deltas after it did not rebuild the paced reply whole"
    )
    assert_books_balanced(site, person, dict.fromkeys(views, 1))


# --- 6: two web processes, one person, two tabs ---------------------------------------------


async def test_two_web_processes_one_person_both_tabs_see_the_reply_and_either_stops_it(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    stack = launch()
    first_web = stack.start_web("web-1", wait=False)
    second_web = stack.start_web("web-2", wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(first_web, second_web, worker)
    cookie = sign_in(first_web.base_url, person, PASSWORD)
    pace(site.upstream, first_token=0.3, rate=15, words=45)  # about 3.5 s

    async with (
        await ChatSocket.connect(first_web.base_url, cookie) as tab_a,
        await ChatSocket.connect(second_web.base_url, cookie) as tab_b,
    ):
        text = "Fault six: two tabs on two servers"
        accepted = await send(tab_a, text)
        reply, conversation = accepted["message"], accepted["conversation"]
        await tab_b.send({"type": "subscribe", "conversation": conversation})
        (snapshot,) = [
            f for f in await tab_b.until(lambda f: f["type"] == "snapshot", timeout=10)
            if f["type"] == "snapshot"
        ]  # fmt: skip
        (shown,) = [m for m in snapshot["messages"] if m["id"] == reply]
        assert shown["status"] in {"pending", "streaming"}, "the reply ended before tab B looked"

        frames_a = await tab_a.until(final_for(reply), timeout=30)
        frames_b = await tab_b.until(final_for(reply), timeout=30)
        row = stored(site, reply)
        assert row.status == "complete" and row.content
        assert frames_a[-1]["type"] == frames_b[-1]["type"] == "done"
        assert frames_a[-1]["status"] == frames_b[-1]["status"] == "complete"
        assert streamed_text(tab_a.frames, reply) == row.content
        after = [f for f in frames_b if f["type"] == "delta" and f["seq"] > shown["seq"]]
        assert [f["seq"] for f in after] == list(
            range(shown["seq"] + 1, shown["seq"] + 1 + len(after))
        )
        assert shown["text"] + "".join(f["text"] for f in after) == row.content

        # Tab A sends; tab B (on the other web process) stops it.
        pace(site.upstream, first_token=0.3, rate=8, words=80)  # about 10 s
        stopped_text = "Fault six: stop me from the other tab"
        accepted2 = await send(tab_a, stopped_text, conversation)
        reply2 = accepted2["message"]
        await tab_b.until(first_delta_of(reply2), timeout=20)
        await tab_b.send({"type": "stop", "message": reply2})
        end_b = (await tab_b.until(final_for(reply2), timeout=20))[-1]
        end_a = (await tab_a.until(final_for(reply2), timeout=20))[-1]
        assert end_a["type"] == end_b["type"] == "done", (end_a, end_b)
        assert end_a["status"] == end_b["status"] == "cancelled"
        row2 = stored(site, reply2)
        assert row2.status == "cancelled"
        (call,) = calls_for(site.upstream, stopped_text)
        assert len(row2.content) < len(call.reply), "the stop did not cut the reply short"
    assert_books_balanced(site, person, {reply: 1, reply2: 1})


# --- 7: RabbitMQ as the broker --------------------------------------------------------------


async def test_rabbitmq_as_the_broker_one_round_trip(
    site: Site, launch: Callable[..., Stack], person: str
) -> None:
    missing = rabbitmq_missing(RABBITMQ_URL)
    if missing:
        service_missing(missing)
    stack = launch(CELERY_BROKER_URL=RABBITMQ_URL)
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(web, worker)
    assert "amqp://guest:**@127.0.0.1:5672//" in worker.log(), "the worker is not on RabbitMQ"
    pace(site.upstream, first_token=0.1, rate=60, words=30)

    async with await ChatSocket.connect(
        web.base_url, sign_in(web.base_url, person, PASSWORD)
    ) as chat:
        accepted, _ = await complete_turn(site, chat, "Fault seven: through RabbitMQ")
    assert_books_balanced(site, person, {accepted["message"]: 1})
