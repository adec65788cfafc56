"""The production path for real: PostgreSQL, Redis broker, channels-redis, a Celery worker.

Run by `make test-production` (part of `make test`), which points DATABASE_URL and
REDIS_URL at the local services. Skips when they are absent; fails under CI=true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from redis import Redis

from conversations.models import Message
from conversations.tasks import generate_reply
from enterprise_ai.celery import app as celery_app
from providers.demo import demo_reply
from tests.support import connected, is_final, receive_until

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def llm_worker() -> Iterator[Any]:
    """A real Celery worker consuming the `llm` queue from the Redis broker."""
    celery_app.control.purge()  # leftovers of an interrupted earlier run
    with start_worker(
        celery_app,
        pool="solo",
        concurrency=1,
        queues=["llm"],
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker


def test_the_configuration_is_the_production_one() -> None:
    assert connection.vendor == "postgresql"
    assert settings.TASK_DISPATCH == "celery"
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert type(get_channel_layer()).__module__ == "enterprise_ai.channel_layers"
    assert settings.CELERY_TASK_ROUTES[generate_reply.name]["queue"] == "llm"


async def test_round_trip_through_consumer_broker_worker_and_redis_layer(
    owner, session_cookie, fast_demo, llm_worker
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "From production", "model": "demo"}
    )
    frames = await receive_until(comm, is_final, timeout=30)
    await comm.disconnect()

    assert frames[0]["type"] == "accepted"
    assert frames[-1]["type"] == "done", frames
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    reply = await sync_to_async(Message.objects.get)(public_id=frames[0]["message"])
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == "".join(d["text"] for d in deltas) == demo_reply("From production")


async def test_stop_reaches_the_worker_through_redis(
    owner, session_cookie, slow_demo, llm_worker
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Long one", "model": "demo"}
    )
    accepted = await comm.receive_json_from(timeout=10)
    await receive_until(comm, lambda f: f["type"] == "delta", timeout=30)
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    frames = await receive_until(comm, is_final, timeout=30)
    await comm.disconnect()
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "cancelled"
    reply = await sync_to_async(Message.objects.get)(public_id=accepted["message"])
    assert reply.status == Message.Status.CANCELLED
    assert reply.content and len(reply.content) < len(demo_reply("Long one"))


async def test_a_task_delivered_three_times_produces_one_reply(
    owner, session_cookie, fast_demo, llm_worker
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Once only", "model": "demo"}
    )
    accepted = await comm.receive_json_from(timeout=10)
    reply = await sync_to_async(Message.objects.get)(public_id=accepted["message"])
    # Two more deliveries of the same task, as a broker redelivery would make.
    generate_reply.apply_async(args=(reply.pk,))
    generate_reply.apply_async(args=(reply.pk,))
    frames = await receive_until(comm, is_final, timeout=30)
    assert frames[-1]["type"] == "done"

    redis = Redis.from_url(settings.CELERY_BROKER_URL)
    for _ in range(100):  # the duplicates are consumed within moments
        if redis.llen("llm") == 0:
            break
        await asyncio.sleep(0.1)
    assert redis.llen("llm") == 0
    assert await comm.receive_nothing(timeout=1.5), "a duplicate delivery streamed again"
    await comm.disconnect()

    replies = Message.objects.filter(
        conversation__public_id=accepted["conversation"], role="assistant"
    )
    assert await sync_to_async(replies.count)() == 1
    await sync_to_async(reply.refresh_from_db)()
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == demo_reply("Once only")


@pytest.mark.parametrize("kind", ["bedrock", "openai"])
async def test_round_trip_with_a_real_provider_double(
    owner, session_cookie, llm_worker, settings, monkeypatch, tmp_path, kind
) -> None:
    from contextlib import ExitStack

    from tests.integration.services import running_service

    with ExitStack() as stack:
        service = await sync_to_async(stack.enter_context)(
            running_service(kind, settings, monkeypatch, tmp_path)
        )
        comm = await connected(await sync_to_async(session_cookie)(owner))
        await comm.send_json_to(
            {"type": "send", "conversation": None, "text": "Through the worker", "model": kind}
        )
        frames = await receive_until(comm, is_final, timeout=30)
        await comm.disconnect()

    assert frames[-1]["type"] == "done", frames
    deltas = [f for f in frames if f["type"] == "delta"]
    expected = service.expected_reply("Through the worker")
    assert "".join(d["text"] for d in deltas) == expected
    reply = await sync_to_async(Message.objects.get)(public_id=frames[0]["message"])
    assert reply.content == expected and reply.answered_by == kind
    assert reply.output_tokens and len(service.model_requests()) == 1
